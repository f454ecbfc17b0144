"""The duplex model offline: sizes, causality on the chunk timeline, padding, per-sample chunks,
gradients, and its building blocks against independent references."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import s2s.models.config as presets
from s2s.attention import ChunkSpec
from s2s.data.features import LogMel
from s2s.models.config import DuplexConfig, base, tiny
from s2s.models.duplex import DuplexModel, shift_by_chunk
from s2s.models.layers import CausalConv1d, Rotation
from s2s.models.token_duplex import TokenDuplexConfig
from s2s.models.vocoder import GriffinLimVocoder

SMALL = DuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)


def _inputs(batch: int, frames: int, generator: torch.Generator):
    mel = 3 * torch.randn(batch, frames * 4, 80, generator=generator) - 6
    feedback = torch.randn(batch, frames, SMALL.feedback_dim, generator=generator)
    return mel, feedback


def test_sizes():
    tiny_count = DuplexModel(tiny()).parameter_count()
    base_count = DuplexModel(base()).parameter_count()
    assert 1_000_000 < tiny_count < 5_000_000, tiny_count
    assert 90_000_000 < base_count < 115_000_000, base_count


def test_outputs_depend_only_on_the_past_of_the_chunk_timeline(generator):
    """Frame t in chunk n sees user audio up to the end of chunk n and feedback before chunk n."""
    torch.manual_seed(0)
    model = DuplexModel(SMALL).eval()
    chunk, frames = 4, 24
    mel, feedback = _inputs(1, frames, generator)
    boundary = 12  # first frame of chunk 3
    later_mel, later_feedback = mel.clone(), feedback.clone()
    later_mel[:, boundary * 4 :] = torch.randn(1, (frames - boundary) * 4, 80, generator=generator)
    later_feedback[:, boundary - chunk :] = torch.randn(
        1, frames - boundary + chunk, SMALL.feedback_dim, generator=generator
    )
    with torch.no_grad():
        reference = model(mel, feedback, chunk=chunk)
        changed = model(later_mel, later_feedback, chunk=chunk)
    assert torch.equal(reference.mel[:, : boundary * 4], changed.mel[:, : boundary * 4])
    assert (reference.mel[:, boundary * 4 :] - changed.mel[:, boundary * 4 :]).abs().max() > 1e-3
    # and the feedback of the current chunk is not read (it is the chunk being produced)
    own = feedback.clone()
    own[:, boundary : boundary + chunk] = 0.0
    with torch.no_grad():
        same = model(mel, own, chunk=chunk)
    assert torch.equal(same.mel[:, : (boundary + chunk) * 4], reference.mel[:, : (boundary + chunk) * 4])


def test_padded_batch_and_per_sample_chunks_equal_one_by_one(generator):
    torch.manual_seed(1)
    model = DuplexModel(SMALL).eval()
    lengths = [30, 17, 23]
    chunks = torch.tensor([1, 4, 3], dtype=torch.int32)
    mel, feedback = _inputs(3, 30, generator)
    with torch.no_grad():
        batched = model(mel, feedback, lengths=torch.tensor(lengths), chunk=chunks, left_chunks=2)
        for row, n in enumerate(lengths):
            alone = model(
                mel[row : row + 1, : n * 4],
                feedback[row : row + 1, :n],
                chunk=int(chunks[row]),
                left_chunks=2,
            )
            torch.testing.assert_close(batched.mel[row : row + 1, : n * 4], alone.mel, atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batched.speaking_logit[row : row + 1, :n], alone.speaking_logit, atol=1e-5, rtol=0
            )


def test_every_parameter_gets_a_finite_gradient(generator):
    model = DuplexModel(SMALL)
    mel, feedback = _inputs(2, 12, generator)
    out = model(mel, feedback, lengths=torch.tensor([12, 9]), chunk=torch.tensor([2, 4], dtype=torch.int32))
    loss = out.mel.abs().mean() + torch.nn.functional.softplus(out.speaking_logit).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_the_residual_stream_keeps_the_parameters_dtype(generator):
    """Under bf16 autocast every RMSNorm sees float32 inputs like its weight (the front end hands
    over bf16; a bf16 residual stream lost precision and made RMSNorm fall back from its fused
    kernel), and the autocast output is as close to float32 as the bf16 rounding of the matmuls;
    a model cast to bf16 keeps a bf16 stream."""
    model = DuplexModel(SMALL)
    mel, feedback = _inputs(2, 8, generator)
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.RMSNorm):
            module.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, m.weight.dtype)))
    reference = model(mel, feedback, chunk=2)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(mel, feedback, chunk=2)
    assert len(seen) == 2 * 2 + 1 + 3 * 2 + 1, len(seen)
    assert set(seen) == {(torch.float32, torch.float32)}, set(seen)
    assert torch.isfinite(mixed.mel).all()
    assert (mixed.mel.float() - reference.mel).abs().max() < 0.25  # bf16 matmuls: ~1e-2 relative
    seen.clear()
    model.to(torch.bfloat16)(mel.bfloat16(), feedback.bfloat16(), chunk=2)
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}, set(seen)


def test_shift_by_chunk_against_a_loop(generator):
    frames = torch.randn(3, 10, 5, generator=generator)
    chunks = torch.tensor([1, 3, 12])
    shifted = shift_by_chunk(frames, chunks)
    for b in range(3):
        for t in range(10):
            expected = frames[b, t - chunks[b]] if t >= chunks[b] else torch.zeros(5)
            assert torch.equal(shifted[b, t], expected)


def test_causal_conv_streams_like_offline(generator):
    conv = CausalConv1d(6, 5, kernel=8, stride=4)
    x = torch.randn(2, 40, 6, generator=generator)
    offline = conv(x)
    # independent reference: explicit left zero padding and a strided window sum in float64
    padded = torch.nn.functional.pad(x.double(), (0, 0, 4, 0))
    weight, bias = conv.conv.weight.double(), conv.conv.bias.double()
    reference = torch.stack(
        [torch.einsum("bki,oik->bo", padded[:, 4 * j : 4 * j + 8], weight) + bias for j in range(10)], dim=1
    )
    torch.testing.assert_close(offline.double(), reference, atol=1e-5, rtol=0)
    state, pieces = conv.initial_state(2), []
    for size in (4, 8, 0, 12, 16):
        out, state = conv.step(x[:, sum(p.shape[1] * 4 for p in pieces) :][:, :size], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), offline, atol=1e-6, rtol=0)


def test_rotary_scores_depend_only_on_relative_position(generator):
    q = torch.randn(1, 1, 1, 16, generator=generator)
    k = torch.randn(1, 1, 1, 16, generator=generator)

    def score(p_q, p_k):
        rotate_q = Rotation.at(torch.tensor([[p_q]]), 16, 10000.0)
        rotate_k = Rotation.at(torch.tensor([[p_k]]), 16, 10000.0)
        return float((rotate_q.apply(q) * rotate_k.apply(k)).sum())

    # complex-number reference in float64: pairs (x_i, x_{i+8}) rotate by p * base^(-i/8)
    zq = q.flatten()[:8].double() + 1j * q.flatten()[8:].double()
    zk = k.flatten()[:8].double() + 1j * k.flatten()[8:].double()
    frequencies = 10000.0 ** (-torch.arange(8, dtype=torch.float64) / 8)
    expected = float((zq * zk.conj() * torch.exp(1j * 5 * frequencies)).real.sum())
    assert math.isclose(score(7, 2), expected, abs_tol=1e-4)
    assert math.isclose(score(107, 102), expected, abs_tol=1e-3)


def test_each_stack_computes_its_rotary_angles_once(generator):
    """The encoder and decoder rotate every self-attention layer by one set of cos/sin per pass
    (Rotation.at in the stack), not one per layer: counted as aten cos/sin dispatches of each stack's
    forward and of the CUDA-graph stacks' forward (what a graph captures), at 3 layers per stack."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from s2s.models.attention_context import OfflineAttention
    from s2s.models.cuda_graphs import DecoderBlocks, EncoderBlocks, chunk_table
    from s2s.models.packing import PackedLayout

    class Trig(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func.overloadpacket in (torch.ops.aten.cos, torch.ops.aten.sin)
            return func(*args, **(kwargs or {}))

    config = dataclasses.replace(SMALL, encoder_layers=3, decoder_layers=3)
    model = DuplexModel(config).eval()
    batch, frames = 2, 12
    x = torch.randn(batch, frames, config.dim, generator=generator)
    positions = torch.arange(frames).expand(batch, frames)
    spec = ChunkSpec(4)
    attention = OfflineAttention(spec, None, config.attention_backend)
    for name, run in (
        ("encoder", lambda: model.encoder(x, positions, attention)),
        ("decoder", lambda: model.decoder(x, positions, x, attention, attention)),
    ):
        with Trig() as trig:
            run()
        assert trig.calls == 2, f"{name}: {trig.calls} cos/sin dispatches for 3 layers (want one of each)"

    table = chunk_table(spec.resolve(batch))
    valid = PackedLayout.from_lengths(torch.tensor([frames, frames]), frames).valid
    for name, run in (
        ("encoder stack", lambda: EncoderBlocks(model.encoder.blocks, config)(x, positions, table, valid)),
        ("decoder stack", lambda: DecoderBlocks(model.decoder.blocks, config)(x, positions, x, table, valid)),
    ):
        with Trig() as trig:
            run()
        assert trig.calls == 2, f"{name}: {trig.calls} cos/sin dispatches for 3 layers (want one of each)"


def test_griffin_lim_vocoder_reconstructs_a_harmonic_tone():
    rate, seconds = 16000, 1.0
    t = np.arange(int(rate * seconds)) / rate
    tone = sum(0.1 / h * np.sin(2 * np.pi * 220 * h * t) for h in range(1, 6))
    audio = torch.tensor(tone, dtype=torch.float32)[None]
    front_end = LogMel()
    mel = front_end(audio)
    vocoder = GriffinLimVocoder()
    offline = vocoder(mel)
    assert offline.shape == audio.shape
    loud = mel > -4
    assert (front_end(offline) - mel)[loud].abs().mean() < 0.5
    state, pieces = vocoder.initial_state(1), []
    for start in range(0, mel.shape[1], 16):
        piece, state = vocoder.stream(mel[:, start : start + 16], state)
        pieces.append(piece)
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape == audio.shape
    assert (front_end(streamed) - mel)[loud].abs().mean() < 1.0
    noise_error = (front_end(0.1 * torch.randn_like(audio)) - mel)[loud].abs().mean()
    assert noise_error > 2.0  # the bound above is meaningful


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of heads"):
        DuplexConfig(dim=100, heads=3)
    with pytest.raises(ValueError, match="must divide heads"):
        DuplexConfig(heads=4, kv_heads=3)
    with pytest.raises(TypeError, match="unknown model config field"):
        DuplexConfig.from_dict({"dims": 3})
    model = DuplexModel(SMALL)
    with pytest.raises(ValueError, match=r"user_mel must be \(B, frames, 80\)"):
        model(torch.zeros(1, 16, 40), torch.zeros(1, 4, SMALL.feedback_dim))
    with pytest.raises(ValueError, match="feedback_from"):
        model(torch.zeros(1, 16, 80), torch.zeros(1, 3, SMALL.feedback_dim))


@pytest.mark.parametrize("name", ["tiny", "base", "tiny_v1"])
def test_model_configs_build_the_presets(name):
    """model=tiny and model=base are model v2 at the preset sizes, model=tiny_v1 the tiny model v1."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])  # chunking from attention=auto
    built = instantiate(cfg.model.config)
    if name == "tiny_v1":
        assert built == presets.tiny()
        return
    sizes = dataclasses.asdict(getattr(presets, name)())
    assert built == TokenDuplexConfig(**sizes, system_vocab=13, user_vocab=15, mel_prenet=0)
