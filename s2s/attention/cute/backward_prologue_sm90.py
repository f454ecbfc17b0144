"""What the backward kernels need before they start, in one memory-bound pass (CuTe DSL):
delta = rowsum(dO * O) per (query row, head) in float32, the zeroed float32 dQ buffer that
the fused kernel adds into, and the row statistics the dK/dV kernels read: LSE * log2(e) and
delta * softmax scale per (head, row), scaled once here instead of once per tile, each
sequence's rows from ``views.row_stats_start`` (16-byte aligned, so the dK/dV kernels' producer
warp copies a query tile's statistics into shared memory by TMA with the tile's Q and dO). A
row finds its sequence by binary search over the table's first rows.

In torch, delta alone took 0.43 ms at 16k tokens x 2048 channels on an H100 (float32 copies of
both operands, a product, a sum), a third of a whole backward at S = 1k. Here each thread reads
16 bytes of dO and of O, multiplies in float32 and the threads of a row finish the sum with warp
shuffles. Rows are visited head-major, so each warp writes contiguous delta values.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute

from s2s.attention.cute.seqlen_info import COLUMNS
from s2s.attention.cute.softmax import LOG2_E
from s2s.attention.cute.views import row_stats_start, row_stats_view, rows_view, stats_view, table_view

THREADS = 256
VECTOR = 8  # 16-byte loads of 16-bit values


class BackwardPrologueSm90:
    """delta, the row statistics and a zeroed dQ accumulator; ``cute.compile`` once per (dtype,
    head dim)."""

    def __init__(self, head_dim: int, zero_dq: bool):
        self.head_dim = head_dim
        self.zero_dq = zero_dq  # only the fused backward adds into a dQ buffer
        self.threads_per_row = head_dim // VECTOR
        self.rows_per_cta = THREADS // self.threads_per_row

    @cute.jit
    def __call__(
        self,
        o: cute.Pointer,  # (total_q, Hq, D)
        do: cute.Pointer,  # (total_q, Hq, D)
        lse: cute.Pointer,  # (Hq, total_q) fp32, the forward's
        delta: cute.Pointer,  # (Hq, total_q) fp32 out
        row_stats: cute.Pointer,  # (Hq, 2, row_stats_rows(total_q, batch)) fp32 out
        dq_accum: cute.Pointer,  # (total_q, Hq, D) fp32 out: zeros
        seq: cute.Pointer,  # (batch, columns) int32, seqlen_info.COLUMNS
        total_q: cutlass.Int32,
        heads_q: cutlass.Int32,
        batch: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        stream: cuda.CUstream,
    ):
        d = self.head_dim
        mO, mdO = rows_view(o, total_q, heads_q, d), rows_view(do, total_q, heads_q, d)
        mdQ = rows_view(dq_accum, total_q, heads_q, d)
        mLSE, mDelta = stats_view(lse, total_q, heads_q), stats_view(delta, total_q, heads_q)
        mStats = row_stats_view(row_stats, total_q, batch, heads_q)
        seq_info = table_view(seq, batch)
        pairs = total_q * heads_q
        self.kernel(mO, mdO, mLSE, mDelta, mStats, mdQ, seq_info, softmax_scale, pairs).launch(
            grid=[(pairs + self.rows_per_cta - 1) // self.rows_per_cta, 1, 1],
            block=[THREADS, 1, 1],
            stream=stream,
        )

    @cute.kernel
    def kernel(
        self,
        mO: cute.Tensor,
        mdO: cute.Tensor,
        mLSE: cute.Tensor,
        mDelta: cute.Tensor,
        mStats: cute.Tensor,
        mdQ: cute.Tensor,
        seq_info: cute.Tensor,
        softmax_scale: cutlass.Float32,
        pairs,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        block, _, _ = cute.arch.block_idx()
        total_q = mO.shape[0]
        pair = block * self.rows_per_cta + tidx // self.threads_per_row
        part = tidx % self.threads_per_row
        total = cutlass.Float32(0.0)
        head = cutlass.Int32(0)
        row = cutlass.Int32(0)
        if pair < pairs:
            head = pair // total_q
            row = pair - head * total_q
            o = cute.local_tile(mO[row, None, head], (VECTOR,), (part,)).load().to(cutlass.Float32)
            do = cute.local_tile(mdO[row, None, head], (VECTOR,), (part,)).load().to(cutlass.Float32)
            total = (o * do).reduce(cute.ReductionOp.ADD, cutlass.Float32(0.0), 0)
            if cutlass.const_expr(self.zero_dq):
                cute.local_tile(mdQ[row, None, head], (VECTOR,), (part,)).store(
                    cute.full((VECTOR,), 0.0, cutlass.Float32)
                )
        # The row's threads are adjacent lanes: a butterfly over them leaves the sum in each.
        offsets = [self.threads_per_row >> (i + 1) for i in range(self.threads_per_row.bit_length() - 1)]
        for i in cutlass.range_constexpr(len(offsets)):
            total = total + cute.arch.shuffle_sync_bfly(total, offset=offsets[i])
        if pair < pairs and part == 0:
            mDelta[row, head] = total
            seq, q_start = self.sequence_of(seq_info, row)
            if seq >= 0:
                stats_row = row_stats_start(q_start, seq) + row - q_start
                mStats[stats_row, 0, head] = mLSE[row, head] * LOG2_E
                mStats[stats_row, 1, head] = total * softmax_scale

    @cute.jit
    def sequence_of(self, seq_info: cute.Tensor, row: cutlass.Int32):
        """The sequence holding packed row ``row`` and its first row, by binary search over the
        table's first rows (non-decreasing: cumulative lengths or b * S); sequence -1 for a row
        outside every sequence (past the last, or past a sequence's length)."""
        first, length = COLUMNS.index("q_start"), COLUMNS.index("seqlen_q")
        lo = cutlass.Int32(0)  # sequences [0, lo) start at or before the row
        hi = seq_info.shape[0]
        while lo < hi:
            mid = (lo + hi) // 2
            if seq_info[mid, first] <= row:
                lo = mid + 1
            else:
                hi = mid
        seq = lo - 1
        q_start = cutlass.Int32(0)
        if seq >= 0:
            q_start = seq_info[seq, first]
            if row >= q_start + seq_info[seq, length]:
                seq = cutlass.Int32(-1)
        return seq, q_start
