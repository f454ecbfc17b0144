"""How a padded (B, T) batch packs into variable-length form, worked out once per forward pass.

Every attention layer of a pass packs the same frames, and reading lengths from the device stalls
the host until the GPU catches up: the layout reads them once (one ``.tolist()``) and keeps both
the device tensors the layers gather with and the host offsets that attention checks, so no
layer has to read the device again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from s2s.attention.mask import packed_positions


@dataclass(frozen=True, eq=False)
class PackedLayout:
    """Valid frames of a (B, T) batch whose sequence b is ``lengths[b]`` frames long."""

    frames: int  # T
    has_padding: bool  # False: every sequence is T frames, the batch runs as it is
    indices: torch.Tensor  # (total,) int64, on the device: the valid frames' rows of (B * T), in order
    cu_seqlens: torch.Tensor  # (B + 1,) int32, on the device: 0, len0, len0 + len1, ...
    offsets: tuple[int, ...]  # cu_seqlens on the host

    @property
    def batch(self) -> int:
        return len(self.offsets) - 1

    @property
    def total(self) -> int:
        """Valid frames in the batch: the rows of its packed form."""
        return self.offsets[-1]

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, frames: int) -> PackedLayout:
        """The layout of sequences ``lengths`` (B,) long, padded to ``frames``; the device tensors
        live on ``lengths``' device. Reads ``lengths`` on the host once (a sync if on a GPU)."""
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be an integer tensor (B,), got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor (B,), got {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(
                f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}"
            )
        values = lengths.tolist()  # the one host sync
        if any(n < 0 or n > frames for n in values):
            raise ValueError(f"lengths must lie in [0, {frames}] (the padded length T), got {values}")
        offsets = (0, *itertools.accumulate(values))
        cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        sequence, local = packed_positions(cu_seqlens, offsets[-1])
        return cls(
            frames=frames,
            has_padding=any(n < frames for n in values),
            indices=sequence * frames + local,  # both int64, on lengths' device
            cu_seqlens=cu_seqlens,
            offsets=offsets,
        )
