"""Mask math as pure functions: the visibility rule, dense masks, key ranges and tile classes.

Every query's visible keys form one contiguous range ``[lo, hi)``, and both ends never decrease
from one query to the next. Kernels rely on that: for a query tile, the key tiles it sees are a
contiguous run whose middle is fully visible and whose ends (at most a tile or two) need masking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from s2s.attention.spec import HostChunks, SequenceChunks

HIDDEN, PARTIAL, FULL = 0, 1, 2


def chunk_index(
    position: torch.Tensor, chunk: torch.Tensor | int, offset: torch.Tensor | int
) -> torch.Tensor:
    """Chunk of a sequence-local position on the shared timeline."""
    return torch.div(offset + position, chunk, rounding_mode="floor")


def chunk_is_visible(q_chunk: torch.Tensor, k_chunk: torch.Tensor, left_chunks: int | None) -> torch.Tensor:
    """The rule on chunk indices: not after the query's chunk, and within the history limit."""
    visible = k_chunk <= q_chunk
    if left_chunks is not None:
        visible = visible & (k_chunk >= q_chunk - left_chunks)
    return visible


def key_is_visible(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    chunk_q: torch.Tensor | int,
    chunk_k: torch.Tensor | int,
    q_offset: torch.Tensor | int,
    k_offset: torch.Tensor | int,
    left_chunks: int | None,
) -> torch.Tensor:
    """The rule, elementwise on broadcastable integer tensors of sequence-local indices."""
    return chunk_is_visible(
        chunk_index(q_pos, chunk_q, q_offset), chunk_index(k_pos, chunk_k, k_offset), left_chunks
    )


def sees_padded_keys(
    chunk_q: int,
    chunk_k: int,
    q_offset: int,
    k_offset: int,
    left_chunks: int | None,
    length_q: int,
    length_k: int,
    frames_k: int,
) -> bool:
    """Whether some query of a sequence's first ``length_q`` sees one of its padded keys
    ``[length_k, frames_k)`` (host ints, no loop over queries). A query's range [lo, hi) never
    moves back, so the first query whose range ends past ``length_k`` has the lowest start of all
    that do: the padding is seen iff that query exists and starts before ``frames_k``."""
    if length_q <= 0 or length_k >= frames_k:
        return False
    first_chunk = (length_k + k_offset) // chunk_k  # the first query chunk whose keys end past length_k
    first_query = max(0, first_chunk * chunk_q - q_offset)
    if first_query >= length_q:
        return False
    if left_chunks is None:
        return True
    q_chunk = (q_offset + first_query) // chunk_q
    return max(0, (q_chunk - left_chunks) * chunk_k - k_offset) < frames_k


def padding_is_hidden(
    chunks: HostChunks, lengths_q: Sequence[int], lengths_k: Sequence[int], frames_k: int
) -> bool:
    """True when no query inside its sequence sees a key past its sequence's end in a batch padded
    to ``frames_k`` keys: the padded batch then computes every real query's output exactly, with no
    packing (each length a multiple of its chunk, or the full padded length, suffices)."""
    for b, (length_q, length_k) in enumerate(zip(lengths_q, lengths_k, strict=True)):
        q_offset, k_offset = chunks.q_offset[b], chunks.k_offset[b]
        sequence = (chunks.chunk_q[b], chunks.chunk_k[b], q_offset, k_offset, chunks.left_chunks)
        if sees_padded_keys(*sequence, length_q, length_k, frames_k):
            return False
    return True


def dense_mask(
    chunks: SequenceChunks,
    seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_q: int | None = None,
    max_k: int | None = None,
) -> torch.Tensor:
    """(B, max Sq, max Sk) boolean mask from the rule; positions beyond a length are False.

    ``max_q`` / ``max_k``: the longest lengths when the caller knows them on the host (None reads
    them from the device, a host sync)."""
    device = chunks.chunk_q.device
    if max_q is None:
        max_q = int(seqlens_q.max()) if seqlens_q.numel() else 0
    if max_k is None:
        max_k = int(seqlens_k.max()) if seqlens_k.numel() else 0
    q_pos = torch.arange(max_q, device=device).view(1, -1, 1)
    k_pos = torch.arange(max_k, device=device).view(1, 1, -1)

    def per_seq(t: torch.Tensor) -> torch.Tensor:
        return t.to(device).view(-1, 1, 1)

    visible = key_is_visible(
        q_pos,
        k_pos,
        per_seq(chunks.chunk_q),
        per_seq(chunks.chunk_k),
        per_seq(chunks.q_offset),
        per_seq(chunks.k_offset),
        chunks.left_chunks,
    )
    in_bounds = (q_pos < per_seq(seqlens_q)) & (k_pos < per_seq(seqlens_k))
    return visible & in_bounds


def packed_positions(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each packed position: the sequence it belongs to and its index inside that sequence."""
    positions = torch.arange(total, device=cu_seqlens.device, dtype=torch.int64)
    sequence = torch.searchsorted(cu_seqlens[1:].contiguous(), positions.to(cu_seqlens.dtype), right=True)
    return sequence, positions - cu_seqlens.long()[sequence]


def packed_dense_mask(
    chunks: SequenceChunks,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    total_q: int | None = None,
    total_k: int | None = None,
) -> torch.Tensor:
    """(total_q, total_k) boolean mask of a packed batch: block diagonal, the rule inside.

    ``total_q`` / ``total_k``: the offsets' last entries when the caller knows them on the host
    (None reads them from the device, a host sync)."""
    total_q = int(cu_seqlens_q[-1]) if total_q is None else total_q
    total_k = int(cu_seqlens_k[-1]) if total_k is None else total_k
    seq_q, local_q = packed_positions(cu_seqlens_q, total_q)
    seq_k, local_k = packed_positions(cu_seqlens_k, total_k)

    def row(t: torch.Tensor) -> torch.Tensor:
        return t.to(seq_q.device)[seq_q].view(-1, 1)

    visible = key_is_visible(
        local_q.view(-1, 1),
        local_k.view(1, -1),
        row(chunks.chunk_q),
        row(chunks.chunk_k),
        row(chunks.q_offset),
        row(chunks.k_offset),
        chunks.left_chunks,
    )
    return visible & (seq_q.view(-1, 1) == seq_k.view(1, -1))


def visible_key_bounds(
    chunks: SequenceChunks, q_pos: torch.Tensor, seqlens_k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible key range [lo, hi) of each query, clipped to [0, Sk]; lo == hi when empty.

    ``q_pos`` is (B, R) sequence-local query indices; the result is two (B, R) int64 tensors.
    """
    chunk_q = chunks.chunk_q.view(-1, 1)
    chunk_k = chunks.chunk_k.view(-1, 1)
    k_offset = chunks.k_offset.view(-1, 1)
    n_keys = seqlens_k.view(-1, 1).to(q_pos.device)
    q_chunk = chunk_index(q_pos, chunk_q, chunks.q_offset.view(-1, 1))
    hi = torch.minimum(torch.clamp((q_chunk + 1) * chunk_k - k_offset, min=0), n_keys)
    if chunks.left_chunks is None:
        lo = torch.zeros_like(hi)
    else:
        lo = (q_chunk - chunks.left_chunks) * chunk_k - k_offset
        lo = torch.minimum(torch.clamp(lo, min=0), hi)
    return lo, hi


def packed_visible_key_bounds(
    chunks: SequenceChunks, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, total_q: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible key range of each packed query, in packed key coordinates: two (total_q,) tensors
    (``total_q`` as in ``packed_dense_mask``)."""
    total_q = int(cu_seqlens_q[-1]) if total_q is None else total_q
    seq_q, local_q = packed_positions(cu_seqlens_q, total_q)
    seqlens_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
    per_row = SequenceChunks(
        chunk_q=chunks.chunk_q[seq_q],
        chunk_k=chunks.chunk_k[seq_q],
        q_offset=chunks.q_offset[seq_q],
        k_offset=chunks.k_offset[seq_q],
        left_chunks=chunks.left_chunks,
    )
    lo, hi = visible_key_bounds(per_row, local_q.view(-1, 1), seqlens_k[seq_q])
    start = cu_seqlens_k.long()[seq_q]
    return lo.view(-1) + start, hi.view(-1) + start


def classify_tiles_from_bounds(
    lo: torch.Tensor,
    hi: torch.Tensor,
    seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    tile_q: int,
    tile_k: int,
    n_key_tiles: int,
) -> torch.Tensor:
    """(B, R / tile_q, n_key_tiles) int8 classes from per-row key ranges (B, R), R a multiple of
    tile_q. A pair is FULL when every valid (query, key) pair in it is visible, HIDDEN when none."""
    batch, rows = lo.shape
    device = lo.device
    row_valid = torch.arange(rows, device=device).view(1, -1) < seqlens_q.view(-1, 1)
    lo = torch.where(row_valid, lo, 0)
    hi = torch.where(row_valid, hi, 0)
    k_start = torch.arange(n_key_tiles, device=device).view(1, -1) * tile_k
    k_end = torch.minimum(k_start + tile_k, seqlens_k.view(-1, 1))
    overlap = torch.minimum(hi.unsqueeze(-1), k_end.unsqueeze(1)) - torch.maximum(
        lo.unsqueeze(-1), k_start.unsqueeze(1)
    )
    n_query_tiles = rows // tile_q
    visible_pairs = overlap.clamp(min=0).view(batch, n_query_tiles, tile_q, n_key_tiles).sum(2)
    rows_per_tile = row_valid.view(batch, n_query_tiles, tile_q).sum(-1)
    cols_per_tile = (k_end - k_start).clamp(min=0)
    all_pairs = rows_per_tile.unsqueeze(-1) * cols_per_tile.unsqueeze(1)
    classes = torch.full_like(visible_pairs, PARTIAL)
    classes[visible_pairs == all_pairs] = FULL
    classes[visible_pairs == 0] = HIDDEN
    return classes.to(torch.int8)


def _run_bounds(hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last True along the last axis (0, 0 where none is True)."""
    n = hits.shape[-1]
    any_hit = hits.any(-1)
    first = hits.int().argmax(-1)
    last = n - hits.flip(-1).int().argmax(-1)
    zero = torch.zeros_like(first)
    return torch.where(any_hit, first, zero).int(), torch.where(any_hit, last, zero).int()


@dataclass(frozen=True)
class TileSchedule:
    """What a block-sparse kernel iterates: per query tile, which key tiles to load and mask.

    For query tile ``t`` of sequence ``b`` the key tiles ``[kv_begin, kv_end)`` are loaded, those
    in ``[full_begin, full_end)`` run without mask arithmetic, the rest of the run is masked.
    """

    classes: torch.Tensor  # (B, n_query_tiles, n_key_tiles) int8: HIDDEN / PARTIAL / FULL
    kv_begin: torch.Tensor  # (B, n_query_tiles) int32
    kv_end: torch.Tensor
    full_begin: torch.Tensor
    full_end: torch.Tensor
    tile_q: int
    tile_k: int

    @staticmethod
    def from_classes(classes: torch.Tensor, tile_q: int, tile_k: int) -> TileSchedule:
        kv_begin, kv_end = _run_bounds(classes != HIDDEN)
        full_begin, full_end = _run_bounds(classes == FULL)
        return TileSchedule(classes, kv_begin, kv_end, full_begin, full_end, tile_q, tile_k)

    def count(self, tile_class: int) -> int:
        return int((self.classes == tile_class).sum())


def tile_schedule(
    chunks: SequenceChunks,
    seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    tile_q: int,
    tile_k: int,
) -> TileSchedule:
    """Per-sequence tiling (tiles start at each sequence's first row and key), as kernels tile."""
    if tile_q <= 0 or tile_k <= 0:
        raise ValueError(f"tile sizes must be positive, got tile_q={tile_q}, tile_k={tile_k}")
    device = chunks.chunk_q.device
    seqlens_q = seqlens_q.to(device=device, dtype=torch.int64)
    seqlens_k = seqlens_k.to(device=device, dtype=torch.int64)
    max_q = int(seqlens_q.max()) if seqlens_q.numel() else 0
    max_k = int(seqlens_k.max()) if seqlens_k.numel() else 0
    n_query_tiles = -(-max_q // tile_q)
    n_key_tiles = -(-max_k // tile_k)
    q_pos = torch.arange(n_query_tiles * tile_q, device=device).view(1, -1)
    lo, hi = visible_key_bounds(chunks, q_pos, seqlens_k)
    classes = classify_tiles_from_bounds(lo, hi, seqlens_q, seqlens_k, tile_q, tile_k, n_key_tiles)
    return TileSchedule.from_classes(classes, tile_q, tile_k)


def visible_pair_count(chunks: SequenceChunks, seqlens_q: torch.Tensor, seqlens_k: torch.Tensor) -> int:
    """Number of visible (query, key) pairs: the FLOP count of benchmarks is 4 * d * this."""
    max_q = int(seqlens_q.max()) if seqlens_q.numel() else 0
    q_pos = torch.arange(max_q, device=chunks.chunk_q.device).view(1, -1)
    lo, hi = visible_key_bounds(chunks, q_pos, seqlens_k)
    valid = q_pos < seqlens_q.view(-1, 1).to(q_pos.device)
    return int(torch.where(valid, hi - lo, 0).sum())
