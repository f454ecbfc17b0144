"""Views of a thread's WGMMA registers: accumulators by (row, column), and an accumulator reused
as the A operand of the next GEMM (P of S = QK^T feeding PV, dS feeding dK or dQ)."""

from __future__ import annotations

import cutlass.cute as cute


def rows_cols(t: cute.Tensor) -> cute.Tensor:
    """View a WGMMA accumulator ((2, 2, V), M, N) per thread as (rows, cols) = ((2, M), (2, V, N))."""
    s, d = t.layout.shape, t.layout.stride
    layout = cute.make_layout(
        ((s[0][1], s[1]), (s[0][0], s[0][2], s[2])),
        stride=((d[0][1], d[1]), (d[0][0], d[0][2], d[2])),
    )
    return cute.make_tensor(t.iterator, layout)


def as_accumulator(operand: cute.Tensor, acc: cute.Tensor) -> cute.Tensor:
    """The registers of an A operand seen in the accumulator's layout, to store converted S into."""
    return cute.make_tensor(operand.iterator, acc.layout)


def accumulator_as_operand_a(acc_layout: cute.Layout) -> cute.Layout:
    """The same registers seen as a 16-bit WGMMA A operand: ((2, 2, V), M, N) -> ((2, 2, 2), M, (V/2, N)).

    For 16-bit inputs an fp32 accumulator of QK^T and the register A operand of PV place each
    value in the same thread, so P needs a conversion but no shuffle.
    """
    s, d = acc_layout.shape, acc_layout.stride
    return cute.make_layout(
        ((s[0][0], s[0][1], 2), s[1], (s[0][2] // 2, s[2])),
        stride=((d[0][0], d[0][1], d[0][2]), d[1], (d[0][2] * 2, d[2])),
    )
