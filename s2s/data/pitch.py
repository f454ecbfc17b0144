"""A causal pitch track on the log-mel frame grid: voicing strength and log F0 per 10 ms frame.

Why not `torchaudio.functional.detect_pitch_frequency`: it frames the signal on its own grid and
median-smooths across frames, so a frame's value depends on audio after it. A probe of what a model
can know at a silence onset must not see the future, and must line up with the log-mel frames. Here
frame `t` uses only the `window` samples that end at sample `(t + 1) * hop` (as LogMel's frame `t`),
and F0 is the lag of the first peak of the normalized autocorrelation between `f0_min` and `f0_max`
(within 10% of the highest, so a multiple of the period does not win).

The model's optional user pitch input (`user_pitch`) is `pitch_features`: per log-mel frame the
voicing and the log2 F0 relative to a causal running reference of the voiced frames before it (a
running mean over the first voiced frames, then an exponential one), not a window median that
needs the future. `pitch_stream` computes the same frames chunk by chunk (state: `PitchState`); the
reference is updated frame by frame with the same operations offline and streaming, so a stream cut
anywhere gives the offline frames.
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
    # The running reference of `pitch_features` (frames whose voicing reaches `voiced` update it):
    voiced: float = 0.5
    reference_hz: float = 150.0  # the prior before any voiced frame
    reference_frames: float = 10.0  # the prior's weight, in voiced frames
    reference_rate: float = 0.01  # then an exponential mean over ~1 / rate voiced frames (1 s of voice)

    def __post_init__(self):
        if not 0 < self.f0_min < self.f0_max < self.sample_rate / 2:
            raise ValueError(f"pitch needs 0 < f0_min < f0_max < Nyquist, got {self}")
        if self.window < 2 * self.max_lag:
            raise ValueError(
                f"pitch window {self.window} samples is shorter than two periods of f0_min={self.f0_min} Hz "
                f"({2 * self.max_lag} samples): lengthen the window or raise f0_min"
            )
        if not (0 < self.voiced <= 1 and self.reference_hz > 0 and self.reference_frames >= 1
                and 0 < self.reference_rate <= 1):  # fmt: skip
            raise ValueError(
                f"pitch reference needs 0 < voiced <= 1, reference_hz > 0, reference_frames >= 1 and "
                f"0 < reference_rate <= 1, got {self}"
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
    padded = torch.nn.functional.pad(audio.double(), (config.window - config.hop, 0))
    return _track(padded[None], config)[0].to(audio.dtype)


def _track(padded: torch.Tensor, config: PitchConfig) -> torch.Tensor:
    """(B, window - hop + samples) float64 audio, its first window - hop samples the past ->
    (B, samples // hop, 2) float64 [voicing, log2 F0]: frame t is the window ending at its sample
    window + (t + 1) * hop - hop."""
    batch = padded.shape[0]
    frames = (padded.shape[1] - (config.window - config.hop)) // config.hop
    if frames <= 0:
        return padded.new_zeros(batch, 0, 2)
    # float32 from here on: the float64 FFT of a 640 s batch took 7 s of a data worker (1 s in float32
    # at the power-of-two length); the peak picking below does not need more. Cast before the windows
    # are cut: they overlap window / hop = 4 times, so the copy that cuts them is then a float32 one.
    used = padded[:, : frames * config.hop + config.window - config.hop].float()
    windows = used.unfold(1, config.window, config.hop).reshape(batch * frames, config.window)
    windows = windows - windows.mean(dim=1, keepdim=True)
    rms_db = 10 * torch.log10(windows.pow(2).mean(dim=1) + 1e-12)
    voiced = rms_db > config.silence_db
    if windows.is_cuda:
        # A GPU computes the silent windows too, for less than a host round trip would cost: no
        # sync, so a training batch's features are queued behind the previous step.
        heard_voicing, lag = _periodicity(windows, config)
    else:
        # On a CPU only windows loud enough to be voiced need the autocorrelation: a dialogue's user
        # channel is silent much of the time (the system's turns), and each window's figures are its own.
        heard_voicing = windows.new_zeros(batch * frames)
        lag = torch.ones(batch * frames, dtype=torch.float64)
        if bool(voiced.any()):
            heard_voicing[voiced], lag[voiced] = _periodicity(windows[voiced], config)
    zero = torch.zeros((), dtype=torch.float64, device=padded.device)
    voicing = torch.where(voiced, heard_voicing.clamp(0.0, 1.0).double(), zero)
    log_f0 = torch.where(voiced, torch.log2(config.sample_rate / lag), zero)
    return torch.stack([voicing, log_f0], dim=1).reshape(batch, frames, 2)


def _periodicity(windows: torch.Tensor, config: PitchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, window) float32 mean-removed windows -> (the peak normalized autocorrelation, the lag of
    the first peak within 10% of the highest, float64 samples), each (N,)."""
    size = 1 << (config.window + config.max_lag - 1).bit_length()  # >= window + max_lag: no wrap-around
    spectrum = torch.fft.rfft(windows, n=size)
    power = spectrum.real.square() + spectrum.imag.square()
    autocorrelation = torch.fft.irfft(power, n=size)[:, : config.max_lag + 1]
    # Normalize each lag by the energies of the two overlapping parts (NCCF), so loudness does not count.
    energy = windows.pow(2).cumsum(dim=1)
    total = energy[:, -1:]
    lags = torch.arange(config.max_lag + 1, device=windows.device)
    before = torch.nn.functional.pad(energy, (1, 0))  # before[k]: energy of the first k samples
    first = before[:, config.window - lags]  # samples [0, W - lag)
    last = total - before[:, lags]  # samples [lag, W)
    nccf = autocorrelation / torch.sqrt(first * last).clamp_min(1e-12)
    search = nccf[:, config.min_lag :]
    # Multiples of the period correlate as well as the period itself: take the peak of the first run
    # of lags within 10% of the best one (the shortest period), not the global maximum.
    near = search >= 0.9 * search.max(dim=1, keepdim=True).values
    lags_searched = torch.arange(search.shape[1], device=search.device)
    first = near.int().argmax(dim=1, keepdim=True)  # the first lag within 10% of the best
    after = ~near & (lags_searched > first)
    ended = after.any(dim=1, keepdim=True)
    end = torch.where(ended, after.int().argmax(dim=1, keepdim=True), search.shape[1])
    first_run = (lags_searched >= first) & (lags_searched < end)
    voicing, best = torch.where(first_run, search, torch.full_like(search, -2.0)).max(dim=1)
    return voicing, (best + config.min_lag).double()


PITCH_CHANNELS = 2  # what pitch_features adds per log-mel frame


@dataclass
class PitchState:
    """A stream's pitch state: the samples the next windows still need, and the running reference."""

    tail: torch.Tensor  # (B, >= window - hop) float64: window - hop samples of context + a partial hop
    reference: torch.Tensor  # (B,) float64: the running reference log2 F0
    weight: torch.Tensor  # (B,) float64: the prior's weight + the voiced frames seen so far

    def where(self, keep: torch.Tensor, other: PitchState) -> PitchState:
        """Per stream: this state where keep[b], else `other`'s (tails of equal length)."""
        return PitchState(
            torch.where(keep[:, None], self.tail, other.tail),
            torch.where(keep, self.reference, other.reference),
            torch.where(keep, self.weight, other.weight),
        )


def pitch_initial_state(batch: int, config: PitchConfig | None = None, device=None) -> PitchState:
    """A stream before its first sample: silence before it, the prior as the reference."""
    config = config or PitchConfig()
    full = lambda size, value: torch.full(size, value, dtype=torch.float64, device=device)
    return PitchState(
        tail=full((batch, config.window - config.hop), 0.0),
        reference=full((batch,), math.log2(config.reference_hz)),
        weight=full((batch,), config.reference_frames),
    )


def pitch_stream(
    audio: torch.Tensor, state: PitchState, config: PitchConfig | None = None
) -> tuple[torch.Tensor, PitchState]:
    """One chunk of (B, samples) audio (any length) -> (the (B, frames, 2) `pitch_features` of the
    frames it completed, the state for the next chunk)."""
    config = config or PitchConfig()
    if audio.dim() != 2 or not audio.is_floating_point():
        raise ValueError(
            f"pitch_stream expects float mono audio shaped (B, samples), got {tuple(audio.shape)}"
        )
    history = config.window - config.hop
    if state.tail.dim() != 2 or state.tail.shape[0] != audio.shape[0] or state.tail.shape[1] < history:
        raise ValueError(
            f"pitch stream state must hold (B={audio.shape[0]}, >= {history}) samples, from "
            f"pitch_initial_state() or a previous pitch_stream() call; got {tuple(state.tail.shape)}"
        )
    buffer = torch.cat([state.tail, audio.to(state.tail.device, torch.float64)], dim=1)
    frames = (buffer.shape[1] - history) // config.hop
    consumed = frames * config.hop
    track = _track(buffer[:, : consumed + history], config)
    relative, reference, weight = _relative_to_reference(track, state.reference, state.weight, config)
    features = torch.stack([track[..., 0], relative], dim=-1).to(audio.dtype)
    return features, PitchState(buffer[:, consumed:], reference, weight)


def _relative_to_reference(
    track: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor, config: PitchConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log2 F0 of each frame of `track` (B, frames, 2) minus the running reference before it, and the
    reference and weight after the last frame.

    The recurrence (per voiced frame: weight += 1, reference += max(1 / weight, rate) x (log F0 -
    reference)) in closed form, with tensor ops on the track's device: a frame-by-frame loop cost 5 s
    of a 640 s training batch in torch ops and 70 ms in NumPy, and needed the host. While 1 / weight
    >= rate the reference is the weighted mean of the prior and the voiced frames (cumulative sums);
    after that it is an exponential mean, taken over blocks short enough that (1 - rate)^-k stays
    far from overflow. Offline and chunk by chunk agree to float64 rounding."""
    log_f0 = track[..., 1].double()
    voiced = track[..., 0] >= config.voiced
    reference, weight = reference.double(), weight.double()
    relative = []
    for start in range(0, track.shape[1], _REFERENCE_BLOCK):
        block, reference, weight = _reference_block(
            log_f0[:, start : start + _REFERENCE_BLOCK], voiced[:, start : start + _REFERENCE_BLOCK],
            reference, weight, config.reference_rate,
        )  # fmt: skip
        relative.append(block)
    if not relative:
        return log_f0.new_zeros(log_f0.shape), reference, weight
    return torch.cat(relative, dim=1), reference, weight


_REFERENCE_BLOCK = 512  # frames: (1 - 0.01)^-512 = e^5.1


def _reference_block(
    log_f0: torch.Tensor, voiced: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor, rate: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block of `_relative_to_reference`: (B, n) float64 log F0 and bool voicing, (B,) reference
    and weight before it -> (B, n) relative log F0, the reference and weight after it."""
    v = voiced.double()
    weights = weight[:, None] + v.cumsum(dim=1)  # the weight after each frame
    # The running mean while 1 / weight >= rate (a prefix: the weight only grows): weight x reference
    # is the prior's plus the sum of the voiced log F0s.
    mean_phase = (1.0 / weights) >= rate
    mean_sums = (weight * reference)[:, None] + (v * log_f0 * mean_phase).cumsum(dim=1)
    mean_reference = mean_sums / weights
    # The exponential mean after it, from the reference the mean phase ended with (or the one given).
    in_mean = v * mean_phase
    start = ((weight * reference) + (v * log_f0 * mean_phase).sum(dim=1)) / (weight + in_mean.sum(dim=1))
    exp_voiced = v * ~mean_phase
    steps = exp_voiced.cumsum(dim=1)  # exponential updates so far, k
    decay = 1.0 - rate
    scaled = (exp_voiced * log_f0 * decay ** (-steps)).cumsum(dim=1)  # sum of x_s (1 - rate)^-k_s
    exp_reference = decay**steps * (start[:, None] + rate * scaled)
    after = torch.where(mean_phase, mean_reference, exp_reference)  # the reference after each frame
    before = torch.cat([reference[:, None], after[:, :-1]], dim=1)
    relative = torch.where(voiced, log_f0 - before, torch.zeros_like(log_f0))
    if log_f0.shape[1] == 0:
        return relative, reference, weight
    return relative, after[:, -1], weights[:, -1]


def pitch_features(audio: torch.Tensor, config: PitchConfig | None = None) -> torch.Tensor:
    """(B, samples) audio -> (B, samples // hop, 2): [voicing in [0, 1], log2 F0 minus the running
    reference of the voiced frames before it (0 when not voiced)], as a stream from silence."""
    config = config or PitchConfig()
    if audio.dim() != 2:
        raise ValueError(f"pitch_features expects mono audio shaped (B, samples), got {tuple(audio.shape)}")
    return pitch_stream(audio, pitch_initial_state(audio.shape[0], config, audio.device), config)[0]
