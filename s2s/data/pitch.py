"""A causal pitch track on the log-mel frame grid: voicing strength and log F0 per 10 ms frame.

Why not `torchaudio.functional.detect_pitch_frequency`: it frames the signal on its own grid and
median-smooths across frames, so a frame's value depends on audio after it. A probe of what a model
can know at a silence onset must not see the future, and must line up with the log-mel frames. Here
frame `t` uses only the `window` samples that end at sample `(t + 1) * hop` (as LogMel's frame `t`),
and F0 is the lag of the first peak of the normalized autocorrelation between `f0_min` and `f0_max`
(within 10% of the highest, so a multiple of the period does not win).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PitchConfig:
    sample_rate: int = 16000
    hop: int = 160  # LogMel's hop: one pitch frame per log-mel frame
    window: int = 640  # 40 ms: two periods of an 50 Hz voice
    f0_min: float = 60.0
    f0_max: float = 400.0
    silence_db: float = -50.0  # frames quieter than this (RMS, dBFS) are unvoiced

    def __post_init__(self):
        if not 0 < self.f0_min < self.f0_max < self.sample_rate / 2:
            raise ValueError(f"pitch needs 0 < f0_min < f0_max < Nyquist, got {self}")
        if self.window < 2 * self.max_lag:
            raise ValueError(
                f"pitch window {self.window} samples is shorter than two periods of f0_min={self.f0_min} Hz "
                f"({2 * self.max_lag} samples): lengthen the window or raise f0_min"
            )

    @property
    def min_lag(self) -> int:
        return max(1, math.floor(self.sample_rate / self.f0_max))

    @property
    def max_lag(self) -> int:
        return math.ceil(self.sample_rate / self.f0_min)


def pitch_track(audio: torch.Tensor, config: PitchConfig | None = None) -> torch.Tensor:
    """(samples,) mono audio -> (frames, 2): [voicing in [0, 1], log2 F0 in Hz (0 when unvoiced)].

    frames = samples // hop, as LogMel. Voicing is the peak normalized autocorrelation (0 for silence).
    """
    config = config or PitchConfig()
    if audio.dim() != 1 or not audio.is_floating_point():
        raise ValueError(f"pitch_track expects float mono audio shaped (samples,), got {tuple(audio.shape)}")
    frames = audio.shape[0] // config.hop
    padded = torch.nn.functional.pad(audio.double(), (config.window - config.hop, 0))
    if frames == 0:
        return audio.new_zeros(0, 2)
    windows = padded[: frames * config.hop + config.window - config.hop].unfold(0, config.window, config.hop)
    windows = windows - windows.mean(dim=1, keepdim=True)
    size = 2 * config.window
    spectrum = torch.fft.rfft(windows, n=size)
    autocorrelation = torch.fft.irfft(spectrum.abs().pow(2), n=size)[:, : config.max_lag + 1]
    # Normalize each lag by the energies of the two overlapping parts (NCCF), so loudness does not count.
    energy = windows.pow(2).cumsum(dim=1)
    total = energy[:, -1:]
    lags = torch.arange(config.max_lag + 1)
    before = torch.nn.functional.pad(energy, (1, 0))  # before[k]: energy of the first k samples
    first = before[:, config.window - lags]  # samples [0, W - lag)
    last = total - before[:, lags]  # samples [lag, W)
    nccf = autocorrelation / torch.sqrt(first * last).clamp_min(1e-12)
    search = nccf[:, config.min_lag :]
    # Multiples of the period correlate as well as the period itself: take the peak of the first run
    # of lags within 10% of the best one (the shortest period), not the global maximum.
    near = search >= 0.9 * search.max(dim=1, keepdim=True).values
    started = near.cumsum(dim=1) > 0
    first_run = started & ~((started & ~near).cumsum(dim=1) > 0)
    voicing, best = torch.where(first_run, search, torch.full_like(search, -2.0)).max(dim=1)
    lag = (best + config.min_lag).double()
    rms_db = 10 * torch.log10(windows.pow(2).mean(dim=1) + 1e-12)
    voiced = rms_db > config.silence_db
    voicing = torch.where(voiced, voicing.clamp(0.0, 1.0), torch.zeros_like(voicing))
    log_f0 = torch.where(voiced, torch.log2(config.sample_rate / lag), torch.zeros_like(lag))
    return torch.stack([voicing, log_f0], dim=1).to(audio.dtype)
