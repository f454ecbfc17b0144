"""The forward's online softmax: per query row a running max and sum over the key tiles seen so
far, and the factor by which O shrinks when the max grows. Kept in registers, one entry per
accumulator row of the thread."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cutlass
import cutlass.cute as cute

from s2s.attention.cute.fragments import rows_cols
from s2s.attention.cute.mask import RowKeyBounds

LOG2_E = math.log2(math.e)


@dataclass(frozen=True)
class OnlineSoftmax:
    """Scores are scaled by ``softmax_scale`` and exponentiated in base 2 (``scale_log2``)."""

    row_max: cute.Tensor  # -inf until a row has seen a key
    row_sum: cute.Tensor
    correction: cute.Tensor  # of the last update: O *= correction before adding P V
    scale_log2: cutlass.Float32

    @staticmethod
    def create(rows: int, softmax_scale: cutlass.Float32) -> OnlineSoftmax:
        row_max = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        row_sum = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        row_max.fill(-cutlass.Float32.inf)
        row_sum.fill(0.0)
        correction = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        return OnlineSoftmax(row_max, row_sum, correction, softmax_scale * LOG2_E)

    @cute.jit
    def update(
        self, masked: cutlass.Constexpr, acc_s: cute.Tensor, bounds: RowKeyBounds, key_first: cutlass.Int32
    ):
        """Scores of one key tile -> unnormalized probabilities in place; the running max and sum
        per row, and ``correction`` for the new max."""
        s = rows_cols(acc_s)
        for r in cutlass.range_constexpr(cute.size(s, mode=[0])):
            if cutlass.const_expr(masked):
                bounds.hide(s, r, key_first, -cutlass.Float32.inf)
            tile_max = s[r, 0]
            for c in cutlass.range_constexpr(1, cute.size(s, mode=[1])):
                tile_max = cute.arch.fmax(tile_max, s[r, c])
            tile_max = cute.arch.warp_reduction_max(tile_max, threads_in_group=4)
            new_max = cute.arch.fmax(self.row_max[r], tile_max)
            # A row that has seen no key yet keeps max -inf; subtract 0 so exp2 gives 0, not NaN.
            safe_max = new_max
            if new_max == -cutlass.Float32.inf:
                safe_max = 0.0
            shift = safe_max * self.scale_log2
            self.correction[r] = cute.math.exp2(self.row_max[r] * self.scale_log2 - shift, fastmath=True)
            self.row_max[r] = new_max
            tile_sum = cutlass.Float32(0.0)
            for c in cutlass.range_constexpr(cute.size(s, mode=[1])):
                p = cute.math.exp2(s[r, c] * self.scale_log2 - shift, fastmath=True)
                s[r, c] = p
                tile_sum += p
            self.row_sum[r] = self.row_sum[r] * self.correction[r] + tile_sum

    @cute.jit
    def rescale(self, acc_o: cute.Tensor):
        """O *= correction, row by row, before the next P V is added."""
        o = rows_cols(acc_o)
        for r in cutlass.range_constexpr(cute.size(o, mode=[0])):
            for c in cutlass.range_constexpr(cute.size(o, mode=[1])):
                o[r, c] = o[r, c] * self.correction[r]

    @cute.jit
    def finalize(self, r: int, softmax_scale: cutlass.Float32):
        """Row ``r``'s 1 / sum (to normalize O) and natural-log LSE; 0 and -inf for a row that
        saw no key."""
        total = cute.arch.warp_reduction_sum(self.row_sum[r], threads_in_group=4)
        inverse = cutlass.Float32(0.0)
        lse = -cutlass.Float32.inf
        if total > 0.0:
            inverse = cute.arch.rcp_approx(total)
            lse = self.row_max[r] * softmax_scale + cute.math.log(total, fastmath=True)
        return inverse, lse
