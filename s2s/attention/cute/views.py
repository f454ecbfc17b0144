"""The kernels' global-memory tensors, built inside ``__call__`` from raw pointers and sizes.

Building views in the DSL rather than from DLPack on the host keeps a call's host cost to a few
microseconds (it matters for streaming steps).
"""

from __future__ import annotations

import cutlass.cute as cute

from s2s.attention.cute.seqlen_info import COLUMNS


def rows_view(pointer: cute.Pointer, rows, heads, head_dim: int) -> cute.Tensor:
    """A contiguous (rows, heads, head_dim) tensor seen as (rows, head_dim, heads). The row stride
    is declared a multiple of the head dim, so every row starts on a 16-byte boundary."""
    row = cute.assume(heads * head_dim, divby=head_dim)
    return cute.make_tensor(pointer, cute.make_layout((rows, head_dim, heads), stride=(row, 1, head_dim)))


def stats_view(pointer: cute.Pointer, rows, heads) -> cute.Tensor:
    """A contiguous (heads, rows) fp32 tensor (LSE, delta) seen as (rows, heads)."""
    return cute.make_tensor(pointer, cute.make_layout((rows, heads), stride=(1, rows)))


def table_view(pointer: cute.Pointer, batch) -> cute.Tensor:
    """The (batch, columns) int32 per-sequence table (``seqlen_info.COLUMNS``)."""
    columns = len(COLUMNS)
    return cute.make_tensor(pointer, cute.make_layout((batch, columns), stride=(columns, 1)))
