"""The device-only Griffin-Lim against torchaudio's (the reference it reimplements) and torch.istft,
in float64 on fresh random spectrograms (in float32 the two round differently, and 32 phase
normalisations of a random, inconsistent spectrogram carry that to 1e-5..2e-2 of the peak);
on a GPU, a CUDA graph of it replays the eager result (no host reads inside)."""

import pytest
import torch
import torchaudio

from s2s.models.griffin_lim import griffin_lim, inverse_stft

N_FFT, HOP = 400, 160  # the log-mel's window and hop (s2s.data.features.LogMelConfig)


def _spectrogram(generator, frames: int, dtype, device="cpu") -> torch.Tensor:
    return (5 * torch.rand(3, N_FFT // 2 + 1, frames, generator=generator, dtype=dtype) ** 2).to(device)


def test_griffin_lim_matches_torchaudio(generator):
    seed = generator.initial_seed()
    for frames in (3, 27):
        spectrogram = _spectrogram(generator, frames, torch.float64)
        window = torch.hann_window(N_FFT, dtype=torch.float64)
        length = (frames - 1) * HOP
        want = torchaudio.functional.griffinlim(
            spectrogram, window, N_FFT, HOP, N_FFT, 2.0, 32, 0.99, length, False
        )
        got = griffin_lim(spectrogram, window, HOP, 32, length)
        assert got.shape == want.shape == (3, length) and torch.isfinite(got).all(), f"seed {seed}"
        error = (got - want).abs().max().item()
        assert error <= 1e-10 * want.abs().max().item(), f"seed {seed}, F={frames}: {error:.2e}"


@pytest.mark.filterwarnings("ignore:The length of signal is shorter")  # torch.istft's, as asked
def test_inverse_stft_matches_torch_istft_and_pads_a_longer_length(generator):
    seed = generator.initial_seed()
    spectrum = torch.complex(
        torch.randn(2, N_FFT // 2 + 1, 9, generator=generator, dtype=torch.float64),
        torch.randn(2, N_FFT // 2 + 1, 9, generator=generator, dtype=torch.float64),
    )
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    for length in (8 * HOP, 8 * HOP + 37, 12 * HOP):
        want = torch.istft(spectrum, N_FFT, HOP, N_FFT, window, length=length)
        got = inverse_stft(spectrum, window, HOP, length)
        assert got.shape == (2, length), f"seed {seed}: length {length}"
        assert (got - want).abs().max() <= 1e-12 * want.abs().max(), f"seed {seed}: length {length}"


def test_bad_hop_and_momentum_are_refused():
    spectrogram, window = torch.ones(1, N_FFT // 2 + 1, 4), torch.hann_window(N_FFT)
    with pytest.raises(ValueError, match="hop must be in"):
        griffin_lim(spectrogram, window, N_FFT, 4, 3 * N_FFT)
    with pytest.raises(ValueError, match="momentum must be in"):
        griffin_lim(spectrogram, window, HOP, 4, 3 * HOP, momentum=1.0)


@pytest.mark.gpu
def test_a_cuda_graph_of_griffin_lim_replays_the_eager_result(generator):
    seed = generator.initial_seed()
    spectrogram = _spectrogram(generator, 12, torch.float32, "cuda")
    window = torch.hann_window(N_FFT, device="cuda")
    length = 11 * HOP
    eager = griffin_lim(spectrogram, window, HOP, 8, length)
    static = spectrogram.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        griffin_lim(static, window, HOP, 8, length)  # warm-up: cuFFT plans
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = griffin_lim(static, window, HOP, 8, length)
    fresh = _spectrogram(generator, 12, torch.float32, "cuda")
    static.copy_(fresh)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    want = griffin_lim(fresh, window, HOP, 8, length)
    assert torch.isfinite(out).all(), f"seed {seed}: the replay left elements unwritten"
    assert torch.allclose(out, want, atol=1e-6, rtol=0), f"seed {seed}"
    assert not torch.equal(want, eager), f"seed {seed}: a replay of the old input would pass"
