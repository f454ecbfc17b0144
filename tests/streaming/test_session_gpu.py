"""The streaming path on a GPU: a bf16 / fp16 model streams end to end (front end, caches through the
CuTe kernel, heads, vocoder), and the Griffin-Lim vocoder runs on CUDA."""

import dataclasses
import importlib.util

import pytest
import torch
import torchaudio

import s2s.attention.cute.launch as cute_launch
from s2s.data.features import LogMel, LogMelConfig
from s2s.data.tokens import BOS, EOS, grammar_errors, speaking_from_tokens
from s2s.models.config import base
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig
from s2s.models.vocoder import GriffinLimVocoder
from s2s.streaming.session import StreamingSession
from s2s.streaming.token_session import TokenStreamingSession

CUDA = torch.cuda.is_available()
HOPPER = CUDA and torch.cuda.get_device_capability() == (9, 0) and importlib.util.find_spec("cutlass")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]


def _dialogue(samples: int, generator: torch.Generator) -> torch.Tensor:
    envelope = (torch.rand(samples // 1600 + 1, generator=generator) > 0.4).float().repeat_interleave(1600)
    return 0.2 * torch.randn(samples, generator=generator) * envelope[:samples]


def _stream(session: StreamingSession, audio: torch.Tensor):
    size, outputs = session.chunk_samples, []
    for start in range(0, audio.shape[0], size):
        piece = audio[start : start + size]
        padded = torch.nn.functional.pad(piece, (0, size - piece.shape[0])).cuda()
        last = start + size >= audio.shape[0]
        outputs.append(session.step(padded, lengths=torch.tensor([piece.shape[0]]), final=last))
    return outputs


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_session_streams_through_the_cute_kernel(dtype, generator, monkeypatch):
    """The tolerance: streaming must add no error of its own beyond the half-precision rounding
    that the offline pass in the same dtype already shows against float32 (same weights, same
    feedback). So the streamed output's error vs the float32 offline pass is held to 1.5x the
    half-precision offline pass's error vs float32 (+1e-3 for the different summation order of
    the chunked cache calls)."""
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    torch.manual_seed(seed)
    config = dataclasses.replace(base(), dropout=0.0, encoder_layers=4, decoder_layers=3)
    model = DuplexModel(config).cuda().to(dtype).eval()
    twin = DuplexModel(dataclasses.replace(config, attention_backend="reference")).cuda().eval()
    twin.load_state_dict({name: p.float() for name, p in model.state_dict().items()})
    audio = _dialogue(16000 * 4 + 1300, generator)  # 102 model frames: the last chunk is short
    frames = audio.shape[0] // 640

    launches = []
    real_prepare = cute_launch.prepare
    monkeypatch.setattr(cute_launch, "prepare", lambda *a, **k: launches.append(1) or real_prepare(*a, **k))
    session = StreamingSession(model, chunk=4, left_chunks=8)
    outputs = _stream(session, audio)
    steps = sum(int(o.frames) > 0 for o in outputs)  # a step with no whole frame attends to nothing
    per_step = config.encoder_layers + 2 * config.decoder_layers
    assert len(launches) == steps * per_step, (
        f"seed {seed}: {len(launches)} CuTe launches, want {steps}x{per_step}"
    )

    mel = torch.cat([o.mel for o in outputs], dim=1)[:, : 4 * frames]
    speaking = torch.cat([o.speaking for o in outputs], dim=1)[:, :frames]
    feedback = torch.cat([o.raw.feedback for o in outputs], dim=1)[:, :frames]
    sound = torch.cat([o.audio for o in outputs], dim=1)
    assert sum(int(o.frames) for o in outputs) == frames
    assert mel.dtype == dtype and sound.dtype == torch.float32
    assert torch.isfinite(mel).all() and torch.isfinite(speaking).all() and torch.isfinite(sound).all()
    assert sound.shape[1] >= frames * 640 and sound[:, : frames * 640].abs().sum() > 0

    user_mel = LogMel().cuda()(audio[None].cuda())
    with torch.no_grad():
        want = twin(user_mel, feedback.float(), chunk=4, left_chunks=8)
        half = model(user_mel.to(dtype), feedback, chunk=4, left_chunks=8)
    offline_error = _relative(half.mel, want.mel)
    stream_error = _relative(mel, want.mel)
    assert offline_error < 3e-2, f"seed {seed}: {dtype} offline pass vs float32: {offline_error:.2e}"
    assert stream_error <= 1.5 * offline_error + 1e-3, (
        f"seed {seed}: {dtype} streaming vs float32 {stream_error:.2e}, offline {dtype} {offline_error:.2e}"
    )
    speaking_error = (speaking.float() - want.speaking).abs().max().item()
    half_speaking_error = (half.speaking.float() - want.speaking).abs().max().item()
    assert speaking_error <= 1.5 * half_speaking_error + 1e-2, (seed, speaking_error, half_speaking_error)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_token_session_streams_through_the_cute_kernel(dtype, generator, monkeypatch):
    """Model v2 in half precision: every attention call of a step on the CuTe kernel, the sampled
    tokens obey the grammar, and given them the offline pass reproduces the stream to within 1.5x
    the half-precision offline pass's own error vs float32 (as for model v1 above)."""
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    torch.manual_seed(seed)
    sizes = {
        k: v for k, v in dataclasses.asdict(base()).items() if k in TokenDuplexConfig.__dataclass_fields__
    }
    config = TokenDuplexConfig(**{**sizes, "dropout": 0.0, "encoder_layers": 3, "decoder_layers": 2})
    model = TokenDuplexModel(config)
    with torch.no_grad():  # an untrained model barely opens replies; make BOS / EOS likely
        model.token_head.bias[BOS] += 3.0
        model.token_head.bias[EOS] += 1.0
    model = model.cuda().to(dtype).eval()
    twin = TokenDuplexModel(dataclasses.replace(config, attention_backend="reference")).cuda().eval()
    twin.load_state_dict({name: p.float() for name, p in model.state_dict().items()})
    audio = _dialogue(16000 * 4 + 1300, generator)
    frames = audio.shape[0] // 640

    launches = []
    real_prepare = cute_launch.prepare
    monkeypatch.setattr(cute_launch, "prepare", lambda *a, **k: launches.append(1) or real_prepare(*a, **k))
    # state_gain 0: an untrained user-state head would veto replies at random (no BOS to compare)
    sampling = SamplingConfig(temperature=0.8, state_gain=0.0)
    session = TokenStreamingSession(model, chunk=4, left_chunks=8, sampling=sampling)
    outputs = _stream(session, audio)
    steps = sum(int(o.frames) > 0 for o in outputs)
    per_step = config.encoder_layers + 2 * config.decoder_layers
    assert len(launches) == steps * per_step, (
        f"seed {seed}: {len(launches)} launches, want {steps}x{per_step}"
    )

    mel = torch.cat([o.mel for o in outputs], dim=1)[:, : 4 * frames]
    speaking = torch.cat([o.speaking for o in outputs], dim=1)[:, :frames]
    tokens = torch.cat([o.raw.feedback for o in outputs], dim=1)[:, :frames]
    sound = torch.cat([o.audio for o in outputs], dim=1)
    assert mel.dtype == dtype and sound.dtype == torch.float32
    assert torch.isfinite(mel).all() and torch.isfinite(sound).all()
    assert (tokens == BOS).any(), f"seed {seed}: no reply opened; the comparison would be vacuous"
    assert not grammar_errors(tokens, False).any(), f"seed {seed}: sampled tokens break the grammar"
    assert torch.equal(speaking.bool(), speaking_from_tokens(tokens, False)), f"seed {seed}"

    user_mel = LogMel().cuda()(audio[None].cuda())
    with torch.no_grad():
        want = twin(user_mel, tokens, chunk=4, left_chunks=8)
        half = model(user_mel.to(dtype), tokens, chunk=4, left_chunks=8)
    offline_error = _relative(half.mel, want.mel)
    stream_error = _relative(mel, want.mel)
    assert offline_error < 3e-2, f"seed {seed}: {dtype} offline pass vs float32: {offline_error:.2e}"
    assert stream_error <= 1.5 * offline_error + 1e-3, (
        f"seed {seed}: {dtype} streaming vs float32 {stream_error:.2e}, offline {dtype} {offline_error:.2e}"
    )
    logits = torch.cat([o.raw.token_logits for o in outputs], dim=1)[:, :frames]
    logit_error = _relative(logits, want.token_logits)
    half_logit_error = _relative(half.token_logits, want.token_logits)
    assert logit_error <= 1.5 * half_logit_error + 1e-3, (seed, logit_error, half_logit_error)


def test_vocoder_on_cuda_matches_the_cpu(generator):
    """The inverse mel is torchaudio's minimum-norm least squares (float32 gelsd on the CPU, which
    CUDA lacks) as a precomputed pseudo-inverse; Griffin-Lim then gives the CPU's audio up to FFT
    rounding."""
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    config = LogMelConfig()
    audio = _dialogue(16000 * 2, generator)[None]
    mel = LogMel(config)(audio)
    vocoder = GriffinLimVocoder(config)
    power_mel = (mel.exp() - config.floor).clamp(min=0).transpose(1, 2)
    solve = torchaudio.transforms.InverseMelScale(
        n_stft=config.window // 2 + 1, n_mels=config.n_mels, sample_rate=config.sample_rate, driver="gelsd"
    )
    reference = solve(power_mel)
    inverse = torch.relu(vocoder.cuda().inverse_mel @ power_mel.cuda()).cpu()
    error = _relative(inverse, reference)
    assert error < 1e-5, f"seed {seed}: pseudo-inverse vs lstsq(gelsd) relative error {error:.2e}"

    on_gpu = vocoder.cuda()(mel.cuda()).cpu()
    on_cpu = GriffinLimVocoder(config)(mel)
    assert on_gpu.shape == on_cpu.shape == (1, mel.shape[1] * config.hop)
    assert torch.isfinite(on_gpu).all()
    error = _relative(on_gpu, on_cpu)
    assert error < 2e-2, f"seed {seed}: Griffin-Lim on CUDA vs CPU relative error {error:.2e}"
    # The round trip is a vocoder, not noise: its log-mel is close to the input's.
    again = LogMel(config)(on_gpu)
    loud = mel > mel.mean()
    assert (again - mel)[loud].abs().mean() < 0.5, f"seed {seed}"
