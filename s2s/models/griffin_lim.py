"""Griffin-Lim phase reconstruction whose every step stays on the device.

torchaudio's `griffinlim` calls `torch.istft`, which checks its window's overlap-add envelope on the
host (a device-to-host read) on each of its 33 inversions, and starts from a scalar made on the
host: a streamed chunk waited for the GPU 33 times and could not be captured in a CUDA graph. Here
the inverse STFT is an inverse real FFT, the window, and an overlap-add (`fold`), divided by the
window's squared overlap-add computed the same way; the iteration is torchaudio's (phases from
ones, fast Griffin-Lim momentum, the same STFT). In float64 the two agree within 1e-10 of the peak;
in float32 they round differently (2.5e-6 on a vocoded chunk of model mel), which 32 phase
normalisations can carry further on a spectrogram no signal has (random noise: up to 2e-2).
"""

from __future__ import annotations

import torch
from torch.nn import functional


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, n_fft, F) windowed frames -> (B, n_fft + hop * (F - 1)) samples, frame f starting at f * hop."""
    batch, n_fft, count = frames.shape
    total = n_fft + hop * (count - 1)
    summed = functional.fold(frames, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop))
    return summed.reshape(batch, total)


def window_envelope(window: torch.Tensor, hop: int, frames: int) -> torch.Tensor:
    """(1, n_fft + hop * (frames - 1)): the squared window overlap-added, what an inverse STFT divides by."""
    return overlap_add((window * window)[None, :, None].expand(1, window.shape[0], frames), hop)


def inverse_stft(
    spectrum: torch.Tensor,
    window: torch.Tensor,
    hop: int,
    length: int,
    envelope: torch.Tensor | None = None,
) -> torch.Tensor:
    """torch.istft(center=True) of a onesided (B, n_fft // 2 + 1, F) spectrum, `length` samples,
    without its host-side check: the window must overlap-add to non-zero (a Hann window of n_fft
    with hop <= n_fft / 2 does). `envelope`: `window_envelope` for these F frames, when the
    caller inverts many spectra of one shape."""
    n_fft = window.shape[0]
    frames = torch.fft.irfft(spectrum, n=n_fft, dim=1) * window[:, None]
    audio = overlap_add(frames, hop)
    if envelope is None:
        envelope = window_envelope(window, hop, spectrum.shape[-1])
    start = n_fft // 2  # center=True: frame f is centred on sample f * hop
    audio = (audio / envelope)[:, start : start + length]
    return functional.pad(audio, (0, length - audio.shape[1]))


def griffin_lim(
    magnitude_power: torch.Tensor,
    window: torch.Tensor,
    hop: int,
    iterations: int,
    length: int,
    power: float = 2.0,
    momentum: float = 0.99,
) -> torch.Tensor:
    """(B, n_fft // 2 + 1, F) spectrogram (|X| ** power) -> (B, length) audio; as
    torchaudio.functional.griffinlim with rand_init=False."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    n_fft = window.shape[0]
    if not 0 < hop <= n_fft // 2:
        raise ValueError(
            f"hop must be in (0, n_fft / 2] for the overlap-add to cover every sample, got {hop}"
        )
    magnitude = magnitude_power.pow(1.0 / power)
    momentum = momentum / (1.0 + momentum)
    complex_dtype = torch.complex128 if magnitude.dtype == torch.float64 else torch.complex64
    angles = torch.ones_like(magnitude, dtype=complex_dtype)
    previous = torch.zeros_like(angles)
    envelope = window_envelope(window, hop, magnitude.shape[-1])  # one for all 33 inversions
    for _ in range(iterations):
        audio = inverse_stft(magnitude * angles, window, hop, length, envelope)
        rebuilt = torch.stft(
            audio, n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect", return_complex=True
        )
        angles = rebuilt - previous * momentum
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return inverse_stft(magnitude * angles, window, hop, length, envelope)
