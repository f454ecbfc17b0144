"""A small CTC recognizer: log-mel -> x4 convolutional subsampling -> separable convolution blocks ->
an optional BiGRU -> word classes.

It reads whole reply windows (2-4 s) offline, so it may look both ways: it judges what was said, it
does not run in the duplex loop. Depthwise-separable convolutions (QuartzNet's time-channel
separable blocks) carry most of the context because they run in parallel over time, which keeps
training to minutes on two CPU cores; one BiGRU layer adds whole-window context cheaply at 25 Hz.
At ~0.6M parameters the artifact stays near 2.5 MB, small enough to travel with an evaluation job.
Padding is zeroed after every layer, so a window's words do not depend on what it is batched with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class RecognizerConfig:
    classes: int  # vocabulary words + CTC blank
    n_mels: int = 80
    channels: int = 192
    subsampling: int = 4  # 1, 2, 4 or 8: stride-2 convolutions, 100 Hz mel -> 25 Hz frames at 4
    blocks: int = 4  # separable convolution blocks
    kernel: int = 15  # their depthwise kernel (frames after subsampling; odd)
    gru_layers: int = 1  # bidirectional GRU layers on top (0: none)
    gru_hidden: int = 96  # units per direction
    dropout: float = 0.1

    def __post_init__(self):
        if self.subsampling not in (1, 2, 4, 8):
            raise ValueError(
                f"subsampling must be 1, 2, 4 or 8 (stride-2 convolutions), got {self.subsampling}"
            )
        if self.classes < 2:
            raise ValueError(
                f"a CTC recognizer needs a blank and at least one word, got {self.classes} classes"
            )
        if self.kernel % 2 != 1:
            raise ValueError(f"the depthwise kernel must be odd (centred), got {self.kernel}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> RecognizerConfig:
        return cls(**record)


class SeparableBlock(nn.Module):
    """x + pointwise(GELU(LayerNorm(depthwise(x)))) over (B, T, C)."""

    def __init__(self, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pointwise = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(self.pointwise(nn.functional.gelu(self.norm(y))))


class CTCRecognizer(nn.Module):
    def __init__(self, config: RecognizerConfig):
        super().__init__()
        self.config = cfg = config
        # Per-bin input normalization, set from training data (set_normalization) and saved with it.
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        strides = [2] * int(math.log2(cfg.subsampling)) or [1]
        self.convs = nn.ModuleList(
            nn.Conv1d(
                cfg.n_mels if i == 0 else cfg.channels, cfg.channels, kernel_size=5, stride=s, padding=2
            )
            for i, s in enumerate(strides)
        )
        self.blocks = nn.ModuleList(
            SeparableBlock(cfg.channels, cfg.kernel, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.gru = None
        width = cfg.channels
        if cfg.gru_layers > 0:
            self.gru = nn.GRU(
                cfg.channels, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True, bidirectional=True,
                dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,
            )  # fmt: skip
            width = 2 * cfg.gru_hidden
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, cfg.classes)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mel_mean.copy_(mean)
        self.mel_std.copy_(std.clamp(min=1e-3))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames out per frames in: each stride-2 convolution (kernel 5, padding 2) halves, rounding up."""
        for conv in self.convs:
            lengths = _conv_lengths(conv, lengths)
        return lengths

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, n_mels) log-mel, (B,) valid frames -> (B, T', classes) log-probabilities, (B,) lengths."""
        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise ValueError(
                f"recognizer expects (batch, frames, {self.config.n_mels}) log-mel, got {tuple(mel.shape)}"
            )
        lengths = lengths.cpu()
        x = _zero_padding((mel - self.mel_mean) / self.mel_std, lengths)
        for conv in self.convs:
            x = nn.functional.gelu(conv(x.transpose(1, 2))).transpose(1, 2)
            lengths = _conv_lengths(conv, lengths)
            x = _zero_padding(x, lengths)
        for block in self.blocks:
            x = _zero_padding(block(x), lengths)
        lengths = lengths.clamp(min=1, max=x.shape[1])
        if self.gru is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            x, _ = nn.utils.rnn.pad_packed_sequence(
                self.gru(packed)[0], batch_first=True, total_length=x.shape[1]
            )
        return self.head(self.dropout(x)).log_softmax(dim=-1), lengths


def _conv_lengths(conv: nn.Conv1d, lengths: torch.Tensor) -> torch.Tensor:
    return torch.div(lengths + 1, 2, rounding_mode="floor") if conv.stride[0] == 2 else lengths


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, C) with frames at or beyond each row's length set to zero."""
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    return x * valid[..., None]
