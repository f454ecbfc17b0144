"""Augmentation that makes reference speech look like a duplex model's output to the recognizer.

A model's speech reaches the recognizer as predicted log-mel (blurry in time) -> Griffin-Lim
vocoder -> audio -> log-mel again. The expensive part (the vocoder, 32 Griffin-Lim iterations) is
`round_trip`, computed once per training window (features.py); the cheap part (`OnlineAugment`:
time smoothing, level, background noise, masks) is drawn afresh for every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2s.data.features import LogMel
from s2s.models.vocoder import GriffinLimVocoder


def smooth_time(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """Centred moving average over `frames` mel frames of (..., T, n_mels); edges repeat the end frames."""
    if frames <= 1:
        return mel
    shape = mel.shape
    x = mel.reshape(-1, shape[-2], shape[-1]).transpose(1, 2)  # (N, n_mels, T)
    left = (frames - 1) // 2
    x = torch.nn.functional.pad(x, (left, frames - 1 - left), mode="replicate")
    return torch.nn.functional.avg_pool1d(x, frames, stride=1).transpose(1, 2).reshape(shape)


def round_trip(
    mel: torch.Tensor, vocoder: GriffinLimVocoder, log_mel: LogMel, stream_frames: int | None = None
) -> torch.Tensor:
    """(B, T, n_mels) log-mel -> vocoder audio -> (B, T, n_mels) log-mel of that audio.

    `stream_frames`: vocode chunk by chunk as the streaming session does (`GriffinLimVocoder.stream`,
    previous frames as phase context), which leaves seams at chunk edges; None: in one piece.
    """
    if stream_frames is None:
        audio = vocoder(mel)
    else:
        state, pieces = vocoder.initial_state(mel.shape[0], mel.device), []
        for first in range(0, mel.shape[1], stream_frames):
            piece, state = vocoder.stream(mel[:, first : first + stream_frames], state)
            pieces.append(piece)
        audio = torch.cat(pieces, dim=1)
    return log_mel(audio)


@dataclass(frozen=True)
class OnlineAugment:
    """Cheap per-item augmentation of log-mel; each knob is drawn uniformly up to its maximum."""

    probability: float = 0.8  # of augmenting an item at all
    max_smoothing: int = 3  # moving average over 1..max frames
    max_gain: float = 1.5  # level change, nats of power (+-)
    max_noise_floor: float = -4.0  # background noise power (log) drawn in [-12, max]: log(exp(mel)+exp(n))
    max_jitter: float = 0.3  # gaussian noise std on the log-mel
    freq_masks: int = 2
    max_freq_mask: int = 8
    time_masks: int = 1
    max_time_mask: int = 4  # frames (10 ms): short, so that no whole word disappears

    def __call__(self, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(T, n_mels) -> (T, n_mels)."""

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=generator))

        if uniform(0, 1) >= self.probability:
            return mel
        mel = smooth_time(mel, int(torch.randint(1, self.max_smoothing + 1, (), generator=generator)))
        mel = mel + uniform(-self.max_gain, self.max_gain)
        if uniform(0, 1) < 0.5:
            floor = uniform(-12.0, self.max_noise_floor) + 0.5 * torch.randn(
                mel.shape[-1], generator=generator
            )
            mel = torch.logaddexp(mel, floor)
        mel = mel + uniform(0, self.max_jitter) * torch.randn(mel.shape, generator=generator)
        mel = mel.clone()
        fill = mel.mean()
        for _ in range(self.freq_masks):
            width = int(torch.randint(0, self.max_freq_mask + 1, (), generator=generator))
            first = int(torch.randint(0, max(1, mel.shape[1] - width), (), generator=generator))
            mel[:, first : first + width] = fill
        for _ in range(self.time_masks):
            width = int(torch.randint(0, self.max_time_mask + 1, (), generator=generator))
            first = int(torch.randint(0, max(1, mel.shape[0] - width), (), generator=generator))
            mel[first : first + width] = fill
        return mel
