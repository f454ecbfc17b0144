"""Which tile a CTA works on, from its block index."""

from __future__ import annotations

from dataclasses import dataclass

import cutlass
import cutlass.cute as cute


@dataclass(frozen=True)
class QueryTile:
    """A CTA of a kernel that owns query rows (forward, dQ)."""

    m_tile: cutlass.Int32  # query tile within the sequence
    head: cutlass.Int32  # query head
    head_k: cutlass.Int32  # its KV head (GQA)
    seq: cutlass.Int32

    @staticmethod
    def heaviest_first(heads_k) -> QueryTile:
        """The grid is (query tiles, query heads, sequences); the last query tiles (most keys
        under the chunk rule) run first, for better tail balance across the SMs."""
        block_m, head, seq = cute.arch.block_idx()
        grid_m, heads_q, _ = cute.arch.grid_dim()
        m_tile = grid_m - 1 - block_m
        head_k = head // (heads_q // heads_k)
        return QueryTile(m_tile, head, head_k, seq)
