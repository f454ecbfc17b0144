"""The base model on a Hopper GPU: every attention (encoder self, decoder self, decoder cross over
the encoder's K/V) runs on the CuTe kernel, and the bf16 model matches its float32 twin on the
float64 reference backend."""

import dataclasses
import importlib.util

import pytest
import torch

import s2s.attention.cute.launch as cute_launch
from s2s.models.config import base
from s2s.models.duplex import DuplexModel

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not HOPPER or importlib.util.find_spec("cutlass") is None,
        reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl",
    ),
]


def test_base_model_attends_through_the_cute_kernel(generator, monkeypatch):
    config = dataclasses.replace(base(), dropout=0.0, attention_backend="cute")
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = DuplexModel(config).cuda().to(torch.bfloat16).eval()
    twin = DuplexModel(dataclasses.replace(config, attention_backend="reference")).cuda().eval()
    twin.load_state_dict({name: p.float() for name, p in model.state_dict().items()})

    frames = 300
    mel = (3 * torch.randn(2, 4 * frames, 80, generator=generator) - 6).cuda()
    feedback = torch.randn(2, frames, config.feedback_dim, generator=generator).cuda()
    lengths = torch.tensor([frames, 211], device="cuda")
    chunks = torch.tensor([4, 2], dtype=torch.int32, device="cuda")

    launches = []
    real_prepare = cute_launch.prepare
    monkeypatch.setattr(cute_launch, "prepare", lambda *a, **k: launches.append(1) or real_prepare(*a, **k))
    with torch.no_grad():
        got = model(mel.bfloat16(), feedback.bfloat16(), lengths=lengths, chunk=chunks, left_chunks=8)
        want = twin(mel, feedback, lengths=lengths, chunk=chunks, left_chunks=8)

    attentions = config.encoder_layers + 2 * config.decoder_layers
    assert len(launches) == attentions, f"{len(launches)} CuTe launches for {attentions} attentions"
    for row, n in enumerate(lengths.tolist()):
        g, w = got.mel[row, : 4 * n].float(), want.mel[row, : 4 * n]
        assert torch.isfinite(g).all()
        error = ((g - w).norm() / w.norm()).item()
        assert error < 3e-2, (
            f"dialogue {row}: bf16 model on cute vs float32 on reference, rel. error {error:.2e}"
        )
