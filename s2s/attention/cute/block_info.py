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

    def query_tiles_seeing_all(
        self,
        mask: ChunkMask,
        key_first: cutlass.Int32,
        key_last: cutlass.Int32,
        m_begin: cutlass.Int32,
        m_end: cutlass.Int32,
    ):
        """The query tiles of [m_begin, m_end) every row of which sees every key of [key_first,
        key_last] (they need no mask), as one run [begin, end): computed once per CTA, not as two
        chunk divisions at the start of every tile (a serial chain of ~80 scalar instructions
        before each tile's GEMMs could issue)."""
        s = mask.seqlen
        return full_query_tiles(
            self.tile_m,
            (s.seqlen_q, s.seqlen_k, s.chunk_q, s.chunk_k, s.q_offset, s.k_offset),
            mask.left_chunks,
            (key_first, key_last),
            (m_begin, m_end),
        )


def full_query_tiles(tile_m: int, sequence: tuple, left_chunks, keys: tuple, tiles: tuple):
    """Query tiles of ``tiles`` = [m_begin, m_end) whose every row sees every key of
    ``keys`` = [key_first, key_last] under the chunk rule of ``sequence`` = (seqlen_q,
    seqlen_k, chunk_q, chunk_k, q_offset, k_offset) and ``left_chunks`` (-1: unlimited): a run
    [begin, end), since both ends of a row's visible keys never decrease with the row. A tile
    needs its first row to see key_last (its chunk at least key_last's chunk) and, with a
    history limit, its last row to still see key_first. Branch-free integer arithmetic on
    non-negative values, so the same function runs on Python ints (tests) and in the kernels;
    chunk indices are capped one past the sequence's last query chunk before they are multiplied,
    so every intermediate fits in int32 while positions (length + offset) stay below 2^30.
    """
    seqlen_q, seqlen_k, chunk_q, chunk_k, q_offset, k_offset = sequence
    key_first, key_last = keys
    m_begin, m_end = tiles
    past_last_chunk = (seqlen_q + q_offset) // chunk_q + 1  # no query row is in this chunk or later
    # Rows r >= first_row see key_last: (r + q_offset) // chunk_q >= key_last's chunk.
    last_key_chunk = cutlass.min((key_last + k_offset) // chunk_k, past_last_chunk)
    first_row = cutlass.max(last_key_chunk * chunk_q - q_offset, 0)
    begin = (first_row + tile_m - 1) // tile_m
    # Rows r < end_row still see key_first: their chunk is at most key_first's + left_chunks.
    key_chunk = cutlass.min((key_first + k_offset) // chunk_k, past_last_chunk)
    limit_chunk = cutlass.min(key_chunk + cutlass.min(left_chunks, past_last_chunk) + 1, past_last_chunk)
    end_row = cutlass.max(limit_chunk * chunk_q - q_offset, 0)
    end = end_row // tile_m  # tiles whose rows all lie below end_row
    unlimited = cutlass.min(cutlass.max(-left_chunks, 0), 1)  # 1 when left_chunks < 0
    covers_sequence = cutlass.min(cutlass.max(end_row - seqlen_q + 1, 0), 1)  # 1: the last tile too
    end = cutlass.max(end, cutlass.max(unlimited, covers_sequence) * m_end)
    keys_exist = cutlass.min(cutlass.max(seqlen_k - key_last, 0), 1)  # 0: key_last is past the keys
    end = cutlass.min(end, keys_exist * m_end)
    begin = cutlass.min(cutlass.max(begin, m_begin), m_end)
    return begin, cutlass.min(cutlass.max(end, begin), m_end)
