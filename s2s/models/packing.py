"""How a padded (B, T) batch packs into variable-length form, worked out once per forward pass.

Every attention layer of a pass packs the same frames, and reading lengths from the device stalls
the host until the GPU catches up: the layout reads them once (one ``.tolist()``) and keeps both
the device tensors the layers gather with and the host offsets that attention checks, so no
layer has to read the device again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from s2s.attention.mask import packed_positions, padding_is_hidden
from s2s.attention.spec import ChunkSpec


@dataclass(frozen=True, eq=False)
class PackedLayout:
    """Valid frames of a (B, T) batch whose sequence b is ``lengths[b]`` frames long."""

    frames: int  # T
    has_padding: bool  # False: every sequence is T frames, the batch runs as it is
    indices: torch.Tensor  # (total,) int64, on the device: the valid frames' rows of (B * T), in order
    cu_seqlens: torch.Tensor  # (B + 1,) int32, on the device: 0, len0, len0 + len1, ...
    offsets: tuple[int, ...]  # cu_seqlens on the host
    valid: torch.Tensor  # (B, T) bool, on the device: the frames inside their sequence
    # (B,) int32, on the device: lengths as attention's seqused_q (unpacked, no padded query computed)
    seqused: torch.Tensor
    # padding_hidden()'s answers by spec: a forward's layers share one spec, so it is worked out once
    _hidden: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def batch(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in itertools.pairwise(self.offsets))

    def padding_hidden(self, spec: ChunkSpec) -> bool:
        """True when `spec` lets no query inside its sequence see a padded key (every length a
        multiple of its chunk, or T): attention then runs on the padded batch as it is, unpacked,
        and gives every real frame the packed result (host ints only: no wait for the device)."""
        if spec not in self._hidden:
            chunks = spec.resolve_host(self.batch, self.indices.device)
            self._hidden[spec] = padding_is_hidden(chunks, self.lengths, self.lengths, self.frames)
        return self._hidden[spec]

    @property
    def total(self) -> int:
        """Valid frames in the batch: the rows of its packed form."""
        return self.offsets[-1]

    @classmethod
    def from_lengths(
        cls, lengths: torch.Tensor, frames: int, device: torch.device | str | None = None
    ) -> PackedLayout:
        """The layout of sequences ``lengths`` (B,) long, padded to ``frames``; the device tensors
        live on ``device`` (by default ``lengths``' device). Reads ``lengths`` on the host once: no
        wait when they are on the host already, a sync when they are on a GPU."""
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be an integer tensor (B,), got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor (B,), got {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(
                f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}"
            )
        values = lengths.tolist()  # the one host read
        # host lengths go to the device without blocking (a blocking copy waits for queued GPU work)
        lengths = lengths.to(device=device or lengths.device, dtype=torch.int64, non_blocking=True)
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
            valid=torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None],
            seqused=lengths.to(torch.int32),
        )


@dataclass(frozen=True, eq=False)
class AlignedLayout:
    """A padded (B, T) batch whose padding no real query sees (checked on the host beforehand, by
    PackedLayout.padding_hidden), described by device tensors only: where lengths must not be read
    (inside a CUDA graph), `attend` runs it unpacked without computing the padded query rows, as
    with a PackedLayout whose padding is hidden."""

    valid: torch.Tensor  # (B, T) bool, on the device: each row's frames inside its sequence, a prefix
    seqused: torch.Tensor = field(init=False)  # (B,) int32: the prefix lengths, attention's seqused_q

    has_padding = True

    def __post_init__(self):
        # one small reduction per stack call, on the device (valid is each row's first frames)
        object.__setattr__(self, "seqused", self.valid.sum(dim=1, dtype=torch.int32))

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def frames(self) -> int:
        return self.valid.shape[1]

    def padding_hidden(self, spec: ChunkSpec) -> bool:
        return True


def runs_unpacked(spec: ChunkSpec, layout: PackedLayout | AlignedLayout | None) -> bool:
    """Whether attention runs this batch as it is, unpacked: no padding, or padding that no real
    query sees (host ints only: nothing waits for the device)."""
    if layout is None or not layout.has_padding:
        return True
    return layout.padding_hidden(spec)


@dataclass(frozen=True, eq=False)
class PackedRows:
    """A batch's valid frames as one row of packed frames (1, N): every sequence after the other,
    then filler frames up to N, a fixed bucket (s2s.models.row_packing). The graphed block stacks
    run on it, so GEMMs and elementwise kernels skip the padding, and attention runs packed with
    the offsets as device tensors only (nothing read on the host inside a CUDA graph)."""

    cu_seqlens: torch.Tensor  # (B + 2,) int32, on the device: the sequences, then the filler; ends at N
    max_seqlen: int  # host int at least every sequence's length (the padded T): the kernels' grid

    has_padding = False  # packed: no padded row, every row of N belongs to a sequence

    @property
    def batch(self) -> int:
        return self.cu_seqlens.shape[0] - 1
