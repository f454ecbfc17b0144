"""The chunk rule on tiles: which key tiles a query tile walks, which query tiles see a key
tile, and which of those need no mask. Fully hidden tiles are never loaded; fully visible ones
skip the mask arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import cutlass
import cutlass.cute as cute

from s2s.attention.cute.mask import ChunkMask


@dataclass(frozen=True)
class KeyTileRuns:
    """Key tiles [begin, end) of a query tile; [full_begin, full_end) inside them are fully
    visible to every row, the tiles before and after need the mask."""

    begin: cutlass.Int32
    full_begin: cutlass.Int32
    full_end: cutlass.Int32
    end: cutlass.Int32


@dataclass(frozen=True)
class BlockInfo:
    """Tile sizes fixed at compile time: ``tile_m`` query rows, ``tile_n`` keys."""

    tile_m: int
    tile_n: int

    @cute.jit
    def key_tile_runs(self, mask: ChunkMask, row_first: cutlass.Int32) -> KeyTileRuns:
        """Key tiles of the query rows [row_first, row_first + tile_m). Visible keys of the first
        and the last row bound those of every row in between."""
        row_last = cutlass.min(row_first + self.tile_m, mask.seqlen.seqlen_q) - 1
        lo_first, hi_first = mask.key_bounds(row_first)
        lo_last, hi_last = mask.key_bounds(row_last)
        begin = lo_first // self.tile_n
        end = (hi_last + self.tile_n - 1) // self.tile_n
        if hi_last <= lo_first:
            end = begin
        full_begin = cutlass.min(cutlass.max((lo_last + self.tile_n - 1) // self.tile_n, begin), end)
        full_end = cutlass.min(cutlass.max(hi_first // self.tile_n, full_begin), end)
        return KeyTileRuns(begin, full_begin, full_end, end)

    @cute.jit
    def query_tile_run(self, mask: ChunkMask, key_first: cutlass.Int32):
        """Query tiles [m_begin, m_end) whose rows see some key of the tile starting at
        ``key_first``: from the first query whose chunk reaches the first key's chunk to the last
        whose history (``left_chunks``) still reaches the last key. The inverse chunk rule."""
        s = mask.seqlen
        key_last = cutlass.min(key_first + self.tile_n, s.seqlen_k) - 1
        first_key_chunk = (key_first + s.k_offset) // s.chunk_k
        last_key_chunk = (key_last + s.k_offset) // s.chunk_k
        q_begin = cutlass.max(first_key_chunk * s.chunk_q - s.q_offset, 0)
        q_end = s.seqlen_q
        if mask.left_chunks >= 0:
            q_end = cutlass.min((last_key_chunk + mask.left_chunks + 1) * s.chunk_q - s.q_offset, s.seqlen_q)
        m_begin = q_begin // self.tile_m
        m_end = (q_end + self.tile_m - 1) // self.tile_m
        if q_end <= q_begin:
            m_end = m_begin
        return m_begin, m_end

    @cute.jit
    def query_tile_sees_all(
        self, mask: ChunkMask, row_first: cutlass.Int32, key_first: cutlass.Int32, key_last: cutlass.Int32
    ):
        """Whether every row of the query tile at ``row_first`` sees every key in
        [key_first, key_last]: then the tile needs no mask."""
        row_last = cutlass.min(row_first + self.tile_m, mask.seqlen.seqlen_q) - 1
        lo_last, _ = mask.key_bounds(row_last)
        _, hi_first = mask.key_bounds(row_first)
        return lo_last <= key_first and hi_first > key_last
