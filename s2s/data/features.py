"""Causal log-mel front end: the same frames offline (whole dialogue) and streaming (chunk by chunk).

Frame `t` is the 25 ms window that ends at sample `(t + 1) * hop`: the signal is preceded by
`window - hop` zeros, so every 10 ms of audio completes exactly one frame and no frame looks at
future samples. Streaming carries the last `window - hop` samples (plus any samples that do not
yet fill a hop) from one chunk to the next, so a stream cut anywhere yields the offline frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    window: int = 400  # 25 ms at 16 kHz
    hop: int = 160  # 10 ms at 16 kHz
    f_min: float = 0.0
    f_max: float | None = None  # Nyquist
    floor: float = 1e-6  # added before the log so silence is finite (log(1e-6) = -13.8)

    def __post_init__(self):
        if self.hop <= 0 or self.window < self.hop:
            raise ValueError(f"log-mel needs 0 < hop <= window, got hop={self.hop}, window={self.window}")
        if self.sample_rate <= 0 or self.n_mels <= 0:
            raise ValueError(f"log-mel needs a positive sample rate and mel count, got {self}")

    @property
    def history(self) -> int:
        """Samples of the past each new frame needs beyond its own hop."""
        return self.window - self.hop

    def frames_for(self, samples: int) -> int:
        return samples // self.hop


class LogMel(torch.nn.Module):
    """(batch, samples) audio -> (batch, frames, n_mels) log-mel, frames = samples // hop."""

    def __init__(self, config: LogMelConfig | None = None):
        super().__init__()
        self.config = config = config or LogMelConfig()
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=config.window, win_length=config.window, hop_length=config.hop, center=False, power=2.0
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=config.n_mels,
            sample_rate=config.sample_rate,
            f_min=config.f_min,
            f_max=config.f_max,
            n_stft=config.window // 2 + 1,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline: the whole signal at once, as if streamed from silence."""
        audio = self._check(audio)
        padded = torch.nn.functional.pad(audio, (self.config.history, 0))
        return self._frames(padded)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The samples a stream has before its first chunk: `history` zeros per stream."""
        return torch.zeros(batch, self.config.history, device=device)

    def stream(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of a stream: returns (frames the chunk completed, state for the next chunk).

        The state is the unconsumed tail: `history` samples of context plus any remainder that does
        not fill a hop yet. Chunks may have any length.
        """
        audio = self._check(audio)
        if state.dim() != 2 or state.shape[0] != audio.shape[0] or state.shape[1] < self.config.history:
            raise ValueError(
                f"log-mel stream state must be (batch={audio.shape[0]}, >= {self.config.history}) "
                f"from initial_state() or a previous stream() call, got {tuple(state.shape)}"
            )
        buffer = torch.cat([state.to(audio.dtype), audio], dim=1)
        frames = (buffer.shape[1] - self.config.history) // self.config.hop
        consumed = frames * self.config.hop
        return self._frames(buffer[:, : consumed + self.config.history]), buffer[:, consumed:]

    def _frames(self, padded: torch.Tensor) -> torch.Tensor:
        if padded.shape[1] < self.config.window:
            return padded.new_zeros(padded.shape[0], 0, self.config.n_mels)
        power = self.spectrogram(padded)  # (batch, freq, frames)
        mel = self.mel_scale(power)
        return torch.log(mel + self.config.floor).transpose(1, 2).contiguous()

    def _check(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2:
            raise ValueError(f"log-mel expects mono audio shaped (batch, samples), got {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise TypeError(f"log-mel expects float audio in [-1, 1], got {audio.dtype}")
        return audio
