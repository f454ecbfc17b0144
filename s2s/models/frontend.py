"""Log-mel frames -> model frames: fixed normalization, then causal convolutional subsampling.

With `user_pitch` each frame carries two pitch channels after the log-mel (voicing in [0, 1] and a
relative log2 F0, already near unit scale): only the log-mel channels are normalized.

The first convolution reads two groups of `r` mel frames (the current and the previous one) and
strides by `r` (x4: 100 Hz -> 25 Hz); the second mixes neighbouring model frames. Both only look
back, and streaming carries their input tails, so a chunk of audio yields exactly its own frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from s2s.models.config import DuplexConfig
from s2s.models.layers import CausalConv1d


@dataclass
class FrontEndState:
    subsample: torch.Tensor  # (B, r, user_channels): the previous group of mel frames
    mix: torch.Tensor  # (B, conv_kernel - 1, dim): the previous model frames

    def where(self, keep: torch.Tensor, other: FrontEndState) -> FrontEndState:
        """Per stream: this state where keep[b], else `other`'s."""
        k = keep.view(-1, 1, 1)
        return FrontEndState(
            torch.where(k, self.subsample, other.subsample), torch.where(k, self.mix, other.mix)
        )

    def reset(self, streams: torch.Tensor) -> FrontEndState:
        """The selected streams (B,) bool back to `initial_state` (zero tails, as a stream starts)."""
        k = streams.view(-1, 1, 1)
        return FrontEndState(torch.where(k, 0.0, self.subsample), torch.where(k, 0.0, self.mix))


class ConvFrontEnd(nn.Module):
    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.config = config
        r = config.mel_per_frame
        self.subsample = CausalConv1d(config.user_channels, config.dim, kernel=2 * r, stride=r)
        self.mix = CausalConv1d(config.dim, config.dim, kernel=config.conv_kernel)
        self.project = nn.Linear(config.dim, config.dim)

    def _normalize(self, mel: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not c.user_pitch:
            return (mel - c.mel_mean) / c.mel_std
        return torch.cat([(mel[..., : c.n_mels] - c.mel_mean) / c.mel_std, mel[..., c.n_mels :]], dim=-1)

    def frames_for(self, mel_frames: int) -> int:
        return mel_frames // self.config.mel_per_frame

    def initial_state(self, batch: int, device=None, dtype=None) -> FrontEndState:
        return FrontEndState(
            self.subsample.initial_state(batch, device, dtype), self.mix.initial_state(batch, device, dtype)
        )

    def forward(
        self, mel: torch.Tensor, state: FrontEndState | None = None
    ) -> tuple[torch.Tensor, FrontEndState]:
        """(B, F, user_channels) log-mel (+ pitch) -> (B, F // r, dim) model frames and the state to
        carry. Offline `state` is None: the convolutions start on zeros, as a stream does, and a
        trailing partial group is dropped; a streaming chunk is whole groups."""
        usable = self.frames_for(mel.shape[1]) * self.config.mel_per_frame
        subsample, mix = (None, None) if state is None else (state.subsample, state.mix)
        x, subsample = self.subsample.step(self._normalize(mel[:, :usable]), subsample)
        x, mix = self.mix.step(nn.functional.gelu(x), mix)
        return self.project(nn.functional.gelu(x)), FrontEndState(subsample, mix)
