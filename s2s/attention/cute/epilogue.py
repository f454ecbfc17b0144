"""From a warpgroup's accumulator registers to the rows of a global tensor inside a sequence:
the store every kernel ends with (O, dQ, dK, dV)."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute

from s2s.attention.cute.named_barrier import sync_warpgroup


@cute.jit
def store_rows(
    thr_mma: cute.ThrMma,
    out: cute.Tensor,
    staging: cute.Tensor,
    mOut: cute.Tensor,
    tile: cutlass.Constexpr,
    wg: cutlass.Int32,
    thread: cutlass.Int32,
    start: cutlass.Int32,
    row_base: cutlass.Int32,
    head: cutlass.Int32,
    seqlen: cutlass.Int32,
):
    """A warpgroup's ``tile`` = (rows, D) result ``out`` (in the output dtype) to ``mOut``: its
    rows are the sequence-local rows ``row_base + i`` of a sequence starting at row ``start``,
    and only those before ``seqlen`` are written. Through shared memory ``staging``, then
    16-byte vector stores."""
    cute.autovec_copy(out, thr_mma.partition_C(staging))
    sync_warpgroup(wg)
    gOut = cute.local_tile(cute.domain_offset((start + row_base, 0), mOut[None, None, head]), tile, (0, 0))
    dtype = out.element_type
    vector = 128 // dtype.width
    threads_per_row = tile[1] // vector
    store = cute.make_tiled_copy_tv(
        cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=128),
        cute.make_ordered_layout((128 // threads_per_row, threads_per_row), order=(1, 0)),
        cute.make_layout((1, vector)),
    )
    thr_store = store.get_slice(thread)
    src = thr_store.partition_S(staging)
    dst = thr_store.partition_D(gOut)
    coords = thr_store.partition_S(cute.make_identity_tensor(tile))
    for m in cutlass.range_constexpr(cute.size(src, mode=[1])):
        if row_base + coords[0, m, 0][0] < seqlen:
            cute.copy(store, src[None, m, None], dst[None, m, None])
