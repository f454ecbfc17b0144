"""The chunk rule inside the kernels: which keys one query row sees.

Same rule as ``s2s.attention.mask`` (the reference): query row i of a sequence is in chunk
``(q_offset + i) // chunk_q``; it sees the keys of every chunk up to its own, and with
``left_chunks >= 0`` only the last ``left_chunks`` chunks before it. On a row the visible keys
are one range [lo, hi), and both ends never decrease with the row: tile ranges (``block_info``)
follow from the first and last row of a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import cutlass
import cutlass.cute as cute

from s2s.attention.cute.fragments import rows_cols
from s2s.attention.cute.seqlen_info import SeqlenInfo


@dataclass(frozen=True)
class ChunkMask:
    """The chunk rule of one sequence: its table row and the history limit (-1: unlimited)."""

    seqlen: SeqlenInfo
    left_chunks: cutlass.Int32

    @cute.jit
    def key_bounds(self, row: cutlass.Int32):
        """Visible keys [lo, hi) of one sequence-local query row, clipped to [0, Sk]."""
        s = self.seqlen
        q_chunk = (row + s.q_offset) // s.chunk_q
        hi = cutlass.min(cutlass.max((q_chunk + 1) * s.chunk_k - s.k_offset, 0), s.seqlen_k)
        lo = cutlass.Int32(0)
        if self.left_chunks >= 0:
            lo = cutlass.min(cutlass.max((q_chunk - self.left_chunks) * s.chunk_k - s.k_offset, 0), hi)
        return lo, hi


@dataclass(frozen=True)
class RowKeyBounds:
    """Visible keys [lo, hi) of each accumulator row a thread holds, computed once per CTA, for
    masking score tiles whose rows are queries (forward, dQ)."""

    coords: cute.Tensor  # (row, key) coordinates of the thread's accumulator entries in a tile
    lo: cute.Tensor
    hi: cute.Tensor

    @staticmethod
    def allocate(coords: cute.Tensor) -> RowKeyBounds:
        rows = cute.size(coords, mode=[0])
        lo = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Int32)
        hi = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Int32)
        return RowKeyBounds(coords, lo, hi)

    def row(self, row_base: cutlass.Int32, r: int) -> cutlass.Int32:
        """The sequence-local query row of the thread's accumulator row ``r``."""
        return row_base + self.coords[r, 0][0]

    def set(self, r: int, bounds) -> None:
        self.lo[r], self.hi[r] = bounds

    def window(self, r: int, key_first: cutlass.Int32):
        """Row ``r``'s visible keys relative to a tile whose first key is ``key_first``."""
        return self.lo[r] - key_first, self.hi[r] - key_first

    def column(self, c: int):
        """The tile-local key of the thread's accumulator column ``c``."""
        return self.coords[0, c][1]

    @cute.jit
    def hide(self, scores: cute.Tensor, r: int, key_first: cutlass.Int32, value: cutlass.Constexpr):
        """Set row ``r`` of a (rows, cols) score tile whose first key is ``key_first`` to
        ``value`` outside the row's visible keys."""
        lo, hi = self.window(r, key_first)
        for c in cutlass.range_constexpr(cute.size(scores, mode=[1])):
            col = self.column(c)
            if col < lo or col >= hi:
                scores[r, c] = value


@cute.jit
def thread_row_bounds(
    thr_mma: cute.ThrMma, tile: cutlass.Constexpr, mask: ChunkMask, row_base: cutlass.Int32
):
    """``RowKeyBounds`` of the rows a thread holds in a (rows, keys) = ``tile`` accumulator of
    ``thr_mma`` whose first row is the sequence-local ``row_base``."""
    bounds = RowKeyBounds.allocate(rows_cols(thr_mma.partition_C(cute.make_identity_tensor(tile))))
    for r in cutlass.range_constexpr(cute.size(bounds.coords, mode=[0])):
        bounds.set(r, mask.key_bounds(bounds.row(row_base, r)))
    return bounds
