"""The duplex model's sizes and timeline, one frozen dataclass (configs/model/*.yaml mirror it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from s2s.data.pitch import PITCH_CHANNELS


@dataclass(frozen=True)
class DuplexConfig:
    # Timeline: 16 kHz audio -> 10 ms log-mel frames -> model frames of `mel_per_frame` mel frames.
    sample_rate: int = 16000
    hop: int = 160
    n_mels: int = 80
    mel_per_frame: int = 4  # r: x4 subsampling, 25 Hz model frames, 4 mel frames predicted per frame
    # Sizes.
    dim: int = 128
    heads: int = 4
    kv_heads: int = 4  # < heads: grouped-query attention
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_ratio: float = 4.0
    conv_kernel: int = 3  # model-rate causal convolution of the front end
    dropout: float = 0.0
    rope_base: float = 10000.0
    # Chunks, in model frames: the default, the set drawn from in training, the history limit.
    chunk: int = 4
    train_chunks: tuple[int, ...] = (1, 2, 4, 8)
    left_chunks: int | None = None
    attention_backend: str = "auto"
    # Fixed normalization of log-mel values (natural log of power + 1e-6) to roughly unit scale.
    mel_mean: float = -6.0
    mel_std: float = 4.0
    # Two more user channels per log-mel frame: voicing and log2 F0 relative to a causal running
    # reference (s2s.data.pitch.pitch_features), appended after the n_mels log-mel channels.
    user_pitch: bool = False

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} must divide heads {self.heads}")
        if self.chunk < 1 or any(c < 1 for c in self.train_chunks):
            raise ValueError(
                f"chunk sizes must be >= 1 model frame, got {self.chunk} and {self.train_chunks}"
            )
        if self.left_chunks is not None and self.left_chunks < 0:
            raise ValueError(f"left_chunks must be >= 0 or None, got {self.left_chunks}")
        object.__setattr__(self, "train_chunks", tuple(int(c) for c in self.train_chunks))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def user_channels(self) -> int:
        """Channels per 10 ms frame of the user input: the log-mel, then the pitch channels if any."""
        return self.n_mels + (PITCH_CHANNELS if self.user_pitch else 0)

    @property
    def frame_samples(self) -> int:
        """Audio samples per model frame (640 = 40 ms by default)."""
        return self.hop * self.mel_per_frame

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.frame_samples

    @property
    def feedback_dim(self) -> int:
        """What the decoder reads back of a frame it produced: r normalized mel frames + speaking."""
        return self.mel_per_frame * self.n_mels + 1

    @classmethod
    def from_dict(cls, values: Mapping) -> DuplexConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names - {"_target_"}
        if unknown:
            raise TypeError(f"unknown model config field(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: v for k, v in values.items() if k in names})


def tiny() -> DuplexConfig:
    """A few million parameters: trains on a 2-core CPU."""
    return DuplexConfig()


def base() -> DuplexConfig:
    """About 100M parameters, head dim 64 with grouped-query attention: a GPU model."""
    return DuplexConfig(dim=768, heads=12, kv_heads=4, encoder_layers=8, decoder_layers=6, dropout=0.1)
