"""What the backward kernels need before they start, in one memory-bound pass (CuTe DSL):
delta = rowsum(dO * O) per (query row, head) in float32, and the zeroed float32 dQ buffer that
the fused kernel adds into.

In torch, delta alone took 0.43 ms at 16k tokens x 2048 channels on an H100 (float32 copies of
both operands, a product, a sum), a third of a whole backward at S = 1k. Here each thread reads
16 bytes of dO and of O, multiplies in float32 and the threads of a row finish the sum with warp
shuffles. Rows are visited head-major, so each warp writes contiguous delta values.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute

from s2s.attention.cute.views import rows_view, stats_view

THREADS = 256
VECTOR = 8  # 16-byte loads of 16-bit values


class BackwardPrologueSm90:
    """delta and a zeroed dQ accumulator; ``cute.compile`` once per (dtype, head dim)."""

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
        delta: cute.Pointer,  # (Hq, total_q) fp32 out
        dq_accum: cute.Pointer,  # (total_q, Hq, D) fp32 out: zeros
        total_q: cutlass.Int32,
        heads_q: cutlass.Int32,
        stream: cuda.CUstream,
    ):
        d = self.head_dim
        mO, mdO = rows_view(o, total_q, heads_q, d), rows_view(do, total_q, heads_q, d)
        mdQ = rows_view(dq_accum, total_q, heads_q, d)
        mDelta = stats_view(delta, total_q, heads_q)
        pairs = total_q * heads_q
        self.kernel(mO, mdO, mDelta, mdQ, pairs).launch(
            grid=[(pairs + self.rows_per_cta - 1) // self.rows_per_cta, 1, 1],
            block=[THREADS, 1, 1],
            stream=stream,
        )

    @cute.kernel
    def kernel(self, mO: cute.Tensor, mdO: cute.Tensor, mDelta: cute.Tensor, mdQ: cute.Tensor, pairs):
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
