"""Building blocks: rotary positions, the feed-forward block and a causal convolution that streams."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Rotation:
    """cos/sin (B, n, 1, head_dim/2) of the rotary angles of absolute positions (B, n).

    Computed once per stack and pass, not per attention layer: every self-attention layer of a stack
    rotates by the same angles, and the float32 cos/sin of large angles was the most expensive
    elementwise kernel of the compiled training step (2.8 ms of 81 on an H200, docs/benchmarks.md).
    Absolute positions keep caches working: a frame's rotation depends on its position on the
    stream, not on where a call started.
    """

    cos: torch.Tensor  # (B, n, 1, D): cos of each pair's angle, in both halves
    sin: torch.Tensor  # (B, n, 1, D): -sin in the first half, +sin in the second

    @classmethod
    def at(cls, positions: torch.Tensor, head_dim: int, base: float) -> Rotation:
        half = head_dim // 2
        frequencies = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
        angles = positions.to(torch.float32)[..., None] * frequencies
        cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
        return cls(torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate pairs (x[i], x[i + D/2]) of x (B, n, H, D) by each frame's angles:
        (a, b) -> (a cos - b sin, b cos + a sin), as x cos + swap(x) sin with the signed sin of `at`
        (the same floats, in three elementwise kernels rather than six: a step runs 28 of these)."""
        x32 = x.float()
        first, second = x32.chunk(2, dim=-1)
        return (x32 * self.cos + torch.cat([second, first], dim=-1) * self.sin).to(x.dtype)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(nn.functional.gelu(self.up(x))))


class CausalConv1d(nn.Module):
    """Conv over time (B, T, C) whose output frame j sees input frames up to (j + 1) * stride - 1.

    Offline, the input is preceded by `kernel - stride` zero frames; streaming carries the last
    `kernel - stride` input frames as state, so chunks of any multiple of `stride` give the same
    frames as one offline pass.
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1):
        super().__init__()
        if kernel < stride:
            raise ValueError(f"a causal conv needs kernel >= stride, got kernel {kernel}, stride {stride}")
        self.conv = nn.Conv1d(channels_in, channels_out, kernel, stride=stride)
        self.stride = stride
        self.context = kernel - stride

    def initial_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch, self.context, self.conv.in_channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x)[0]

    def step(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, n, C) after the carried input frames `state` (None: zeros, a stream's start) ->
        (output frames, the state to carry)."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        if x.shape[1] % self.stride:
            raise ValueError(
                f"causal conv input of {x.shape[1]} frames is not a multiple of its stride {self.stride}"
            )
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.conv.out_channels), state
        frames = torch.cat([state, x], dim=1)
        out = self.conv(frames.transpose(1, 2)).transpose(1, 2)
        return out, frames[:, frames.shape[1] - self.context :]


def residual_stream(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    """The residual stream in the blocks' parameter dtype: float32 under autocast, where the front
    end hands over bf16 (the sums of 2 x layers residual adds keep their precision, and RMSNorm sees
    matching input and weight dtypes, which its fused kernel needs), the model's own dtype when
    the model is cast (bf16 streaming)."""
    return x.to(norm.weight.dtype)
