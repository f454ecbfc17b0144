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


ROW_STATISTICS = 2  # per query row and head: LSE * log2(e), delta * softmax scale


def row_stats_rows(total_q, batch):
    """Rows of the prologue's row-statistics buffer: room for every sequence's rows from its
    ``row_stats_start`` (``total_q`` plus 4 a sequence), rounded up to a multiple of 4 so each
    (head, statistic) run starts on a 16-byte boundary. Python ints on the host, Int32 in the
    kernels."""
    return (total_q + 4 * batch + 3) // 4 * 4


def row_stats_start(q_start, seq):
    """Row of sequence ``seq``'s first query in the row-statistics buffer: its packed row
    ``q_start`` rounded down to a multiple of 4, plus 4 for each earlier sequence. TMA reads a
    box only from a 16-byte-aligned address in its innermost dimension (an unaligned one is an
    illegal instruction, stop 51), so each sequence's query tiles must start aligned; since the
    rounding moves a start back by at most 3 rows, the 4 rows a sequence adds keep it clear of the
    previous one (FlashAttention pads its per-sequence LSE the same way, by 128 rows)."""
    return q_start // 4 * 4 + 4 * seq


def row_stats_view(pointer: cute.Pointer, total_q, batch, heads) -> cute.Tensor:
    """The contiguous (heads, ROW_STATISTICS, ``row_stats_rows(total_q, batch)``) fp32 buffer
    seen as (rows, statistic, heads): one query tile's two statistics are two runs of
    contiguous rows, which one TMA box (rows, 2) copies into shared memory."""
    rows = cute.assume(row_stats_rows(total_q, batch), divby=4)
    return cute.make_tensor(
        pointer,
        cute.make_layout((rows, ROW_STATISTICS, heads), stride=(1, rows, ROW_STATISTICS * rows)),
    )


def table_view(pointer: cute.Pointer, batch) -> cute.Tensor:
    """The (batch, columns) int32 per-sequence table (``seqlen_info.COLUMNS``)."""
    columns = len(COLUMNS)
    return cute.make_tensor(pointer, cute.make_layout((batch, columns), stride=(columns, 1)))
