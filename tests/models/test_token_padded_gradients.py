"""Training gradients of model v2 from a padded batch equal the sum of each dialogue's alone.

A padded batch runs attention through the packed (variable-length) path, or, when every length is
a multiple of its chunk, unpacked on the padded batch; a dialogue alone runs the dense one. Every
loss reads per-frame outputs (the user CTC head, the token logits, the user-state head), so a
frame that lands on the wrong row in packing or unpacking, or a gradient the packed backward writes
to the wrong place, shows here. The GPU case runs the base model on the CuTe
kernel in bf16 against the float32 reference backend: the 60 s training windows (every batch
padded) left the user CTC untrained on the H200 while 40 s windows (mostly unpadded) did not.
"""

import dataclasses
import importlib.util

import pytest
import torch

from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from tests.models.test_packing import record_attention_paths

SMALL = TokenDuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0)
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _inputs(config, lengths, generator):
    batch, frames = len(lengths), max(lengths)
    mel = 3 * torch.randn(batch, frames * config.mel_per_frame, config.n_mels, generator=generator) - 6
    tokens = torch.randint(0, config.system_vocab, (batch, frames), generator=generator)
    # fixed random read-outs of every output (sliced to each head's width), as (rows per model frame,
    # values): the loss is linear in each of them
    per_frame = {"user_ctc_logits": 1, "token_logits": 1, "user_state_logits": 1, "mel": config.mel_per_frame}
    reads = {
        name: (rows, torch.randn(batch, frames * rows, config.n_mels, generator=generator))
        for name, rows in per_frame.items()
    }
    return mel, tokens, reads


def _loss(out, reads, lengths):
    total = 0.0
    for name, (rows, read) in reads.items():
        values = getattr(out, name).float()
        for row, n in enumerate(lengths):
            weights = read[row, : n * rows, : values.shape[-1]].to(values.device)
            total = total + (values[row, : n * rows] * weights).sum()
    return total


def _gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {
        name: p.grad.detach().double().cpu() for name, p in model.named_parameters() if p.grad is not None
    }


def _padded(model, mel, tokens, reads, lengths, chunks, device, autocast):
    """Gradients of `model` on the padded batch (the packed attention path)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(
            mel.to(device), tokens.to(device), lengths=torch.tensor(lengths, device=device),
            chunk=torch.tensor(chunks, dtype=torch.int32, device=device),
        )  # fmt: skip
        return _gradients(model, _loss(out, reads, lengths))


def _alone(model, mel, tokens, reads, lengths, chunks, device, autocast):
    """Gradients of `model` summed over each dialogue run alone (the dense attention path)."""
    total: dict[str, torch.Tensor] = {}
    for row, (n, chunk) in enumerate(zip(lengths, chunks, strict=True)):
        one_mel = mel[row : row + 1, : n * model.config.mel_per_frame].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            single = model(one_mel, tokens[row : row + 1, :n].to(device), chunk=chunk)
            one_reads = {name: (rows, read[row : row + 1]) for name, (rows, read) in reads.items()}
            grads = _gradients(model, _loss(single, one_reads, [n]))
        for name, grad in grads.items():
            total[name] = total.get(name, 0) + grad
    return total


def _errors(got, want):
    assert got.keys() == want.keys()
    return {
        name: ((got[name] - want[name]).norm() / want[name].norm().clamp(min=1e-30)).item() for name in want
    }


def _worst(padded, alone):
    errors = _errors(padded, alone)
    name = max(errors, key=errors.get)
    return name, errors[name]


@pytest.mark.parametrize(
    "lengths, path",
    [([40, 27, 33], "packed"), ([40, 28, 33], "dense")],
    ids=["off-the-chunk-grid", "on-the-chunk-grid"],
)
def test_padded_batch_gradients_equal_the_dialogues_alone_on_the_cpu(lengths, path, generator, monkeypatch):
    """27 frames at chunk 2 leave a padded key in a real query's chunk: the batch is packed; 28 do
    not (every length a multiple of its chunk): the padded batch runs unpacked. Both are exact."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    model = TokenDuplexModel(SMALL).eval()
    chunks = [4, 2, 1]
    mel, tokens, reads = _inputs(SMALL, lengths, generator)
    cpu = torch.device("cpu")
    calls = record_attention_paths(monkeypatch)
    padded = _padded(model, mel, tokens, reads, lengths, chunks, cpu, False)
    assert calls and set(calls) == {path}, f"seed {seed}: attention calls {calls}"
    monkeypatch.undo()
    alone = _alone(model, mel, tokens, reads, lengths, chunks, cpu, False)
    assert len(padded) == len(list(model.parameters())), "every parameter gets a gradient"
    assert all(torch.isfinite(g).all() for g in padded.values())
    name, error = _worst(padded, alone)
    # float32 summation order only: <= 6e-5 over 25 seeds; a frame on the wrong row gives O(1)
    assert error < 5e-4, f"seed {seed}: {name} padded vs alone, relative error {error:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(
    not HOPPER or importlib.util.find_spec("cutlass") is None,
    reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl",
)
def test_base_model_padded_gradients_on_cute_equal_the_dialogues_alone_on_the_reference(generator):
    """bf16 autocast on the CuTe kernel's packed path against float32 on the reference backend,
    dialogues 1443 and 1000 frames long as in a 60 s training batch."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = TokenDuplexConfig(
        dim=768,
        heads=12,
        kv_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        attention_backend="cute",
    )
    cuda = torch.device("cuda")
    model = TokenDuplexModel(config).to(cuda).eval()
    twin = TokenDuplexModel(dataclasses.replace(config, attention_backend="reference")).to(cuda).eval()
    twin.load_state_dict(model.state_dict())
    lengths, chunks = [1443, 1000], [4, 2]
    mel, tokens, reads = _inputs(config, lengths, generator)
    padded = _padded(model, mel, tokens, reads, lengths, chunks, cuda, True)
    assert all(torch.isfinite(g).all() for g in padded.values())
    reference = _alone(twin, mel, tokens, reads, lengths, chunks, cuda, False)
    # the same bf16 kernel on each dialogue alone (the dense path): the rounding the packed path
    # is allowed, parameter by parameter
    floor = _errors(_alone(model, mel, tokens, reads, lengths, chunks, cuda, True), reference)
    errors = _errors(padded, reference)
    excess = {name: errors[name] - 2 * floor[name] for name in errors}
    name = max(excess, key=excess.get)
    worst = sorted(errors, key=errors.get)[-3:]
    # a frame on the wrong row, or a gradient written to the wrong place, gives O(1)
    assert excess[name] < 2e-2, (
        f"seed {seed}: {name}: packed bf16 cute vs float32 reference rel. error {errors[name]:.2e}, "
        f"the dense bf16 cute path's {floor[name]:.2e}; largest: "
        + ", ".join(f"{n} {errors[n]:.2e} (dense {floor[n]:.2e})" for n in worst)
    )
