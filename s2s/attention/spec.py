"""ChunkSpec: the one description of a chunk-causal mask that every backend takes.

Queries and keys live on a shared timeline of chunks. Query ``i`` of a sequence is in chunk
``(q_offset + i) // chunk_q``; key ``j`` is in chunk ``(k_offset + j) // chunk_k``. A key is
visible when its chunk is not after the query's chunk and, with ``left_chunks`` set, not more
than ``left_chunks`` chunks before it. The arithmetic lives in ``s2s.attention.mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from s2s.attention.mask import TileSchedule

IntOrPerSequence = int | torch.Tensor


@dataclass(frozen=True)
class SequenceChunks:
    """A ChunkSpec resolved for a batch: one int64 value per sequence, on the data's device."""

    chunk_q: torch.Tensor
    chunk_k: torch.Tensor
    q_offset: torch.Tensor
    k_offset: torch.Tensor
    left_chunks: int | None

    @property
    def batch(self) -> int:
        return self.chunk_q.shape[0]


@dataclass(frozen=True)
class HostChunks:
    """The same values as SequenceChunks, as host ints (one per sequence): what host-side decisions
    (which attention path a padded batch takes) read without waiting for the device."""

    chunk_q: tuple[int, ...]
    chunk_k: tuple[int, ...]
    q_offset: tuple[int, ...]
    k_offset: tuple[int, ...]
    left_chunks: int | None


def _check_scalar(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"ChunkSpec.{name} must be an int or an int32 tensor with one value per sequence, "
            f"got {type(value).__name__}"
        )
    if value < minimum:
        rule = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"ChunkSpec.{name} must be {rule}, got {value}")


def _check_tensor(name: str, value: torch.Tensor) -> None:
    if value.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"ChunkSpec.{name} must be an int32 tensor (one value per sequence), got {value.dtype}; "
            f"convert it with .to(torch.int32)"
        )
    if value.dim() != 1:
        raise ValueError(
            f"ChunkSpec.{name} must be a 1-D tensor with one value per sequence, "
            f"got shape {tuple(value.shape)}"
        )


@dataclass(frozen=True, eq=False)
class ChunkSpec:
    """Chunk sizes, history limit and timeline offsets of one attention call.

    ``chunk_q``, ``chunk_k``, ``q_offset`` and ``k_offset`` are ints, or int32 tensors with one
    value per sequence (dynamic-chunk training, per-stream cache lengths). ``chunk_k`` defaults to
    ``chunk_q`` (self-attention). ``left_chunks=None`` means unlimited history.
    """

    chunk_q: IntOrPerSequence
    chunk_k: IntOrPerSequence | None = None
    left_chunks: int | None = None
    q_offset: IntOrPerSequence = 0
    k_offset: IntOrPerSequence = 0
    # resolve()'s results by (batch, device): a model builds one spec per forward and every attention
    # layer resolves it, so per-sequence tensors are moved and checked (a host read) once, not per call
    _resolved: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, minimum in (("chunk_q", 1), ("chunk_k", 1), ("q_offset", 0), ("k_offset", 0)):
            value = getattr(self, name)
            if value is None and name == "chunk_k":
                continue
            if isinstance(value, torch.Tensor):
                _check_tensor(name, value)
            else:
                _check_scalar(name, value, minimum)
        if self.left_chunks is not None:
            _check_scalar("left_chunks", self.left_chunks, 0)

    @property
    def effective_chunk_k(self) -> IntOrPerSequence:
        return self.chunk_q if self.chunk_k is None else self.chunk_k

    @property
    def is_per_sequence(self) -> bool:
        values = (self.chunk_q, self.effective_chunk_k, self.q_offset, self.k_offset)
        return any(isinstance(v, torch.Tensor) for v in values)

    def resolve(self, batch: int, device: torch.device | str = "cpu") -> SequenceChunks:
        """Expand every field to one int64 value per sequence, checking per-sequence tensors (once
        per batch size and device: a spec's tensors are read as they were at the first call)."""
        return self._resolve_both(batch, device)[0]

    def resolve_host(self, batch: int, device: torch.device | str = "cpu") -> HostChunks:
        """The values of ``resolve(batch, device)`` as host ints, from the same single read."""
        host = self._resolve_both(batch, device)[1]
        if host is None:
            raise ValueError(
                "this ChunkSpec was made from device values (ChunkSpec.from_resolved) and has no host "
                "copy of them; ask the spec it was resolved from"
            )
        return host

    @classmethod
    def from_resolved(cls, chunks: SequenceChunks) -> ChunkSpec:
        """A spec for values already resolved and checked (by the spec they came from): `resolve`
        returns them as they are, reading nothing, so it can be built where the device must not be
        read, inside a CUDA graph capture. It has no host values (`resolve_host` refuses)."""
        spec = cls(chunks.chunk_q, chunks.chunk_k, chunks.left_chunks, chunks.q_offset, chunks.k_offset)
        spec._resolved[(chunks.batch, chunks.chunk_q.device)] = (chunks, None)
        return spec

    def _resolve_both(
        self, batch: int, device: torch.device | str
    ) -> tuple[SequenceChunks, HostChunks | None]:
        key = (batch, torch.device(device))
        if key not in self._resolved:
            self._resolved[key] = self._resolve(batch, key[1])
        return self._resolved[key]

    def _resolve(self, batch: int, device: torch.device) -> tuple[SequenceChunks, HostChunks]:
        fields = {
            "chunk_q": (self.chunk_q, 1),
            "chunk_k": (self.effective_chunk_k, 1),
            "q_offset": (self.q_offset, 0),
            "k_offset": (self.k_offset, 0),
        }
        resolved, host, checked = {}, {}, {}
        for name, (value, minimum) in fields.items():
            if isinstance(value, torch.Tensor) and checked.get(id(value), (None, None, -1))[2] >= minimum:
                # chunk_k is chunk_q (self-attention): already read and checked
                resolved[name], host[name] = checked[id(value)][:2]
            elif isinstance(value, torch.Tensor):
                if value.shape[0] != batch:
                    raise ValueError(
                        f"ChunkSpec.{name} has {value.shape[0]} values but the batch has {batch} "
                        f"sequences; give one value per sequence"
                    )
                # the one read of the values (no wait for the device when the tensor is on the host)
                values = tuple(value.tolist())
                if batch > 0 and min(values) < minimum:
                    rule = "positive" if minimum == 1 else "non-negative"
                    raise ValueError(
                        f"ChunkSpec.{name} must be {rule} for every sequence, got min {min(values)}"
                    )
                # not blocking: a blocking copy to a GPU would wait for all the work queued before it
                resolved[name] = value.to(device=device, dtype=torch.int64, non_blocking=True)
                host[name] = values
                checked[id(value)] = (resolved[name], values, minimum)
            else:
                resolved[name] = torch.full((batch,), value, dtype=torch.int64, device=device)
                host[name] = (value,) * batch
        return (
            SequenceChunks(left_chunks=self.left_chunks, **resolved),
            HostChunks(left_chunks=self.left_chunks, **host),
        )

    # The three views of the mask that backends and kernels consume.

    def dense_mask(
        self, seqlens_q: torch.Tensor | int, seqlens_k: torch.Tensor | int, batch: int | None = None
    ) -> torch.Tensor:
        """Boolean (B, max Sq, max Sk) mask, True where visible; False beyond each length."""
        from s2s.attention.mask import dense_mask

        lengths_q, lengths_k = _lengths(seqlens_q, seqlens_k, batch)
        return dense_mask(self.resolve(lengths_q.shape[0], lengths_q.device), lengths_q, lengths_k)

    def tile_schedule(
        self,
        seqlens_q: torch.Tensor | int,
        seqlens_k: torch.Tensor | int,
        tile_q: int,
        tile_k: int,
        batch: int | None = None,
    ) -> TileSchedule:
        """Classify every (query tile, key tile) pair as hidden, partial or fully visible."""
        from s2s.attention.mask import tile_schedule

        lengths_q, lengths_k = _lengths(seqlens_q, seqlens_k, batch)
        chunks = self.resolve(lengths_q.shape[0], lengths_q.device)
        return tile_schedule(chunks, lengths_q, lengths_k, tile_q, tile_k)

    def block_mask(
        self,
        seqlen_q: int,
        seqlen_k: int,
        batch: int = 1,
        *,
        cu_seqlens_q: torch.Tensor | None = None,
        cu_seqlens_k: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        block_size: int = 128,
    ) -> BlockMask:
        """FlexAttention BlockMask; with cu_seqlens, over the packed (1, total) timeline."""
        from s2s.attention.backends.flex import build_block_mask

        if cu_seqlens_q is not None:
            batch = cu_seqlens_q.shape[0] - 1
            device = cu_seqlens_q.device
        chunks = self.resolve(batch, device)
        return build_block_mask(chunks, seqlen_q, seqlen_k, cu_seqlens_q, cu_seqlens_k, block_size=block_size)


def _lengths(
    seqlens_q: torch.Tensor | int, seqlens_k: torch.Tensor | int, batch: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ints or per-sequence tensors into two int64 length tensors of equal batch."""
    tensors = [s for s in (seqlens_q, seqlens_k) if isinstance(s, torch.Tensor)]
    if batch is None:
        batch = tensors[0].shape[0] if tensors else 1
    device = tensors[0].device if tensors else torch.device("cpu")

    def as_tensor(value: torch.Tensor | int) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=torch.int64)
        return torch.full((batch,), value, dtype=torch.int64, device=device)

    return as_tensor(seqlens_q), as_tensor(seqlens_k)
