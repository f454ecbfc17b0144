"""dK and dV of chunk-causal attention for Hopper (sm_90a), in the CuTe DSL, and with ``with_dq``
dQ too: the fused backward.

One CTA owns 128 keys of one (sequence, KV head): two consumer warpgroups hold 64 key rows each,
with dK and dV accumulating in fp32 registers. The producer streams the Q and dO tiles (64 query
rows) of every query head of the group that can see these keys: by the chunk rule that is one
contiguous run of query tiles, so hidden pairs are never loaded. Per query tile it computes
S^T = K Q^T and dP^T = V dO^T, P^T = exp(S^T - LSE), dS^T = P^T (dP^T - delta) (scaled by the
softmax scale, so dK and dQ need no scaling afterwards), then dV += P^T dO and dK += dS^T Q,
reading Q and dO through transposed views of their shared memory. Tiles whose every (query, key)
pair is visible skip the mask. Each query tile's LSE * log2(e) and delta * scale (written,
scaled, by the prologue) come into shared memory by TMA with its Q and dO, as FlashAttention's
sm90 backward does, instead of by a global load after the tile's GEMMs are issued (its latency
was 12% of the main loop's stall samples under Nsight Compute, stop 51).

Without dQ (the deterministic mode's dK/dV kernel) each CTA owns its dK/dV rows and sums GQA
heads in a fixed order: deterministic without atomics. With dQ, each warpgroup also writes its
half of dS to shared memory and, once both halves are there, computes a (64 rows x D/2) slice of
dQ = dS K over all 128 keys. It stages that slice in shared memory, and a warp of the producer
warpgroup adds it to a float32 dQ buffer in global memory with a TMA reduce-add, which the L2
applies atomically: five GEMMs per tile pair instead of the two-kernel path's seven, at the price
of a float32 dQ buffer and an order of additions that varies from run to run.

At head dim 64 the fused kernel walks 128-row query tiles (``KeyTiles.tile_m = 128``, two stages),
as FlashAttention's sm90 backward does: S^T and dP^T are 64 x 128 per warpgroup, each thread
shares the statistics of one query row, and dQ is split by rows (``KeyTiles.dq_by_rows``): each
warpgroup computes 64 query rows x all 64 columns from its rows of dS and all of K, twice the
work per pipeline stage, barrier and dQ hand-off of the 64-row tiling. ``S2S_CUTE_BWD_D64=legacy``
(read on the host at launch, see ``backward.backward_tiles``) selects the 64-row tiling instead.

At head dim 128 the tile shape is FlashAttention's sm90 one already (64 query rows, 128 keys, dQ
in 64 x 64 slices); ``S2S_CUTE_BWD_D128=wide`` (``KeyTiles.split_commits``, the default; ``legacy``
the order before) takes FlashAttention's order within a tile (``key_tile_split``): S^T and dP^T are committed
apart, so P = exp(S^T - LSE) runs on the warpgroup while dP^T's GEMM runs on the tensor cores;
dV is issued as soon as P is in registers, so dS is computed while it runs; dQ and dK follow the
dS barrier, and the dQ slice is staged while dK's GEMM runs. Each query row's statistics are
computed once (two threads per row) and dS^T goes to shared memory with stmatrix, as in the
128-row tiling.
"""

from __future__ import annotations

import dataclasses

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass.cute.nvgpu import cpasync, warp, warpgroup
from cutlass.memory import SmemAllocator
from cutlass.tensor_utils import LayoutEnum

from s2s.attention.cute.carried_swizzled_store import CarriedSwizzledStore
from s2s.attention.cute.epilogue import store_rows
from s2s.attention.cute.fragments import accumulator_as_operand_a, as_accumulator, rows_cols
from s2s.attention.cute.hoisted_stmatrix import HoistedStmatrixStore
from s2s.attention.cute.mask import ChunkMask
from s2s.attention.cute.named_barrier import (
    WARPGROUP_THREADS,
    DqHandshake,
    NamedBarrier,
    sync_consumers,
    sync_warpgroup,
)
from s2s.attention.cute.pipeline import WARPS_PER_WARPGROUP, loaded_once, tma_pipeline, warpgroup_order
from s2s.attention.cute.seqlen_info import SeqlenInfo
from s2s.attention.cute.softmax import LOG2_E
from s2s.attention.cute.tile_operands import (
    DqSliceOperands,
    HalfRowStatistic,
    KeyColumns,
    KeyKernelCopies,
    KeyKernelMmas,
    KeySharedLayouts,
    KeySharedTiles,
    KeyTileOperands,
    QueryTileStep,
    RowStatistics,
)
from s2s.attention.cute.tiles import PRODUCER_REGISTERS, KeyTiles
from s2s.attention.cute.views import ROW_STATISTICS, row_stats_start, row_stats_view, rows_view, table_view

DS_BUFFERS = 2  # dS of tile m+1 is written while the other warpgroup may still read tile m's
KEY_BOUNDS = 2  # KeyTiles.row_statistics, masked tiles: a query row's first and past-last visible key


def transposed_scores_mma(dtype, tiles: KeyTiles) -> cute.TiledMma:
    """The WGMMA of S^T = K Q^T and dP^T = V dO^T: a warpgroup's (keys, queries) tile, K = the
    head dim, both operands K-major. Its accumulator's columns are the queries whose statistics
    ``row_columns`` reads (in adjacent pairs in the split order: ``column_pair``)."""
    k_major = cute.nvgpu.OperandMajorMode.K
    return sm90_utils.make_trivial_tiled_mma(
        dtype, dtype, k_major, k_major, cutlass.Float32, (1, 1, 1), (tiles.keys_per_warpgroup, tiles.tile_m)
    )


def dq_slice_mma(dtype, tiles: KeyTiles) -> cute.TiledMma:
    """The WGMMA of a warpgroup's dQ slice = dS K: (queries, head dim), K = the tile's keys, dS
    from shared memory with queries contiguous and K through its transposed view."""
    mn_major = cute.nvgpu.OperandMajorMode.MN
    return sm90_utils.make_trivial_tiled_mma(
        dtype, dtype, mn_major, mn_major, cutlass.Float32, (1, 1, 1), tiles.dq_slice
    )


def dq_staging_layout(tiles: KeyTiles):
    """The fp32 buffers (one per consumer warpgroup) where each stages its dQ slice for the dQ
    warp's TMA reduce-add: 128-byte swizzled rows."""
    return sm90_utils.make_smem_layout_epi(
        cutlass.Float32, LayoutEnum.ROW_MAJOR, tiles.dq_slice, tiles.consumer_warpgroups
    )


def column_pair(statistics: cute.Tensor, column, value: int):
    """Statistic ``value`` of queries ``column`` and ``column + 1`` (``column`` even, rows
    contiguous per statistic) as one shared-memory load of two elements."""
    address = (statistics.iterator + statistics.layout((column, value))).toint()
    width = 2 * statistics.element_type.width // 8
    pointer = cute.make_ptr(statistics.element_type, address, cute.AddressSpace.smem, assumed_align=width)
    return cute.make_tensor(pointer, cute.make_layout(2)).load()


class ChunkAttentionBackwardDkDvSm90:
    """Keys stay, query tiles stream (``KeyTiles``): four GEMMs per query tile, five
    ``with_dq``."""

    def __init__(self, tiles: KeyTiles, with_dq: bool):
        if tiles.tile_m not in (WARPGROUP_THREADS // 2, WARPGROUP_THREADS):
            raise ValueError(f"query tiles of 64 or 128 rows (a thread's statistics), got {tiles.tile_m}")
        if tiles.split_commits and (not with_dq or tiles.tile_m != WARPGROUP_THREADS // 2):
            raise ValueError("the split tile order is the fused kernel's (it stages dQ) with 64-row tiles")
        self.tiles = tiles
        self.with_dq = with_dq
        # One query tile's work: FlashAttention's order within the tile, or ours.
        self.tile_step = self.key_tile_split if tiles.split_commits else self.key_tile

    @cute.jit
    def __call__(
        self,
        q: cute.Pointer,  # (total_q, Hq, D)
        k: cute.Pointer,  # (total_k, Hk, D)
        v: cute.Pointer,  # (total_k, Hk, D)
        do: cute.Pointer,  # (total_q, Hq, D)
        row_stats: cute.Pointer,  # (Hq, 2, row_stats_rows(total_q, batch)) fp32: the prologue's
        dq_accum: cute.Pointer,  # (total_q, Hq, D) fp32, zeroed, dQ is added into it (with_dq only)
        dk: cute.Pointer,  # (total_k, Hk, D) out
        dv: cute.Pointer,  # (total_k, Hk, D) out
        seq: cute.Pointer,  # (B, 8) int32
        total_q: cutlass.Int32,
        total_k: cutlass.Int32,
        heads_q: cutlass.Int32,
        heads_k: cutlass.Int32,
        batch: cutlass.Int32,
        grid_tiles: cutlass.Int32,  # key tiles of the longest sequence
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        stream: cuda.CUstream,
    ):
        d = self.tiles.head_dim
        dq_rows, dq_cols = self.tiles.dq_slice  # with_dq: each warpgroup's slice of a tile's dQ
        mQ, mdO, mdQ = (rows_view(p, total_q, heads_q, d) for p in (q, do, dq_accum))
        mK, mV, mdK, mdV = (rows_view(p, total_k, heads_k, d) for p in (k, v, dk, dv))
        mStats = row_stats_view(row_stats, total_q, batch, heads_q)
        seq_info = table_view(seq, batch)
        self.dtype = mQ.element_type

        st_shape = (
            self.tiles.keys_per_warpgroup,
            self.tiles.tile_m,
            d,
        )  # S^T and dP^T: (keys, queries), K = head dim
        grad_shape = (
            self.tiles.keys_per_warpgroup,
            d,
            self.tiles.tile_m,
        )  # dK and dV: (keys, head dim), K = queries
        dq_shape = (dq_rows, dq_cols, self.tiles.tile_n)  # dQ slice: (queries, head dim), K = keys
        ds_shape = (self.tiles.tile_m, dq_cols, self.tiles.tile_n)  # dS of the whole tile: (queries, keys)
        k_major = cute.nvgpu.OperandMajorMode.K
        mn_major = cute.nvgpu.OperandMajorMode.MN
        st_mma = transposed_scores_mma(self.dtype, self.tiles)
        grad_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            k_major,
            mn_major,
            cutlass.Float32,
            (1, 1, 1),
            grad_shape[:2],
            warpgroup.OperandSource.RMEM,
        )
        # K and V: one stage per warpgroup (its 64 keys), loaded once. Q and dO: a ring.
        sK_layout = sm90_utils.make_smem_layout_a(
            LayoutEnum.from_tensor(mK), st_shape, self.dtype, self.tiles.consumer_warpgroups
        )
        sQ_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mQ), st_shape, self.dtype, self.tiles.q_stages
        )
        load = cpasync.CopyBulkTensorTileG2SOp()
        k_smem = cute.slice_(sK_layout, (None, None, 0))
        q_smem = cute.slice_(sQ_layout, (None, None, 0))
        tma_k, tma_mK = cpasync.make_tiled_tma_atom(load, mK, k_smem, (self.tiles.keys_per_warpgroup, d))
        tma_v, tma_mV = cpasync.make_tiled_tma_atom(load, mV, k_smem, (self.tiles.keys_per_warpgroup, d))
        tma_q, tma_mQ = cpasync.make_tiled_tma_atom(load, mQ, q_smem, (self.tiles.tile_m, d))
        tma_do, tma_mdO = cpasync.make_tiled_tma_atom(load, mdO, q_smem, (self.tiles.tile_m, d))
        # A query tile's row statistics come with its Q and dO: one TMA box of (rows, 2).
        stats_smem = cute.slice_(self.staged_statistics_layout(), (None, None, 0))
        tma_stats, tma_mStats = cpasync.make_tiled_tma_atom(
            load, mStats, stats_smem, (self.tiles.tile_m, ROW_STATISTICS)
        )
        self.kv_bytes = 2 * cute.size_in_bytes(self.dtype, k_smem)  # K and V share a stage
        # Q, dO and the statistics share a stage.
        self.q_bytes = 2 * cute.size_in_bytes(self.dtype, q_smem) + cute.size_in_bytes(
            cutlass.Float32, stats_smem
        )

        fields = {
            "kv_barriers": cute.struct.MemRange[cutlass.Int64, self.tiles.consumer_warpgroups * 2],
            "q_barriers": cute.struct.MemRange[cutlass.Int64, self.tiles.q_stages * 2],
            "order_barriers": cute.struct.MemRange[cutlass.Int64, self.tiles.consumer_warpgroups],
            # int16 and here, in the alignment gap before sK: the d128 fused kernel has no other
            # shared memory to spare.
            "bounds": cute.struct.Align[
                cute.struct.MemRange[cutlass.Int16, cute.cosize(self.bounds_layout())], 16
            ],
            "sK": cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024],
            "sV": cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024],
            "sQ": cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024],
            "sdO": cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024],
        }
        mmas = KeyKernelMmas(st_mma, grad_mma)
        layouts = KeySharedLayouts(sK_layout, sQ_layout)
        copies = KeyKernelCopies(
            k=tma_k, mK=tma_mK, v=tma_v, mV=tma_mV, q=tma_q, mQ=tma_mQ, do=tma_do, mdO=tma_mdO,
            stats=tma_stats, mStats=tma_mStats,
        )  # fmt: skip
        if cutlass.const_expr(self.with_dq):
            dq_mma = dq_slice_mma(self.dtype, self.tiles)
            sdS_layout = sm90_utils.make_smem_layout_a(LayoutEnum.COL_MAJOR, ds_shape, self.dtype, DS_BUFFERS)
            sdQ_layout = dq_staging_layout(self.tiles)
            tma_dq, tma_mdQ = cpasync.make_tiled_tma_atom(
                cpasync.CopyReduceBulkTensorTileS2GOp(),
                mdQ,
                cute.slice_(sdQ_layout, (None, None, 0)),
                dq_shape[:2],
            )
            copies = dataclasses.replace(copies, dq=tma_dq, mdQ=tma_mdQ)
            fields["sdS"] = cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sdS_layout)], 1024]
            fields["sdQ"] = cute.struct.Align[
                cute.struct.MemRange[cutlass.Float32, cute.cosize(sdQ_layout)], 1024
            ]
            mmas = KeyKernelMmas(st_mma, grad_mma, dq_mma)
            layouts = KeySharedLayouts(sK_layout, sQ_layout, sdS_layout, sdQ_layout)
        fields["sStats"] = cute.struct.Align[
            cute.struct.MemRange[cutlass.Float32, cute.cosize(self.staged_statistics_layout())], 128
        ]
        self.shared_storage = cute.struct(type("SharedStorage", (), {"__annotations__": fields}))

        self.keys_kernel(
            mmas,
            copies,
            mdK,
            mdV,
            seq_info,
            left_chunks,
            softmax_scale,
            layouts,
        ).launch(
            grid=[grid_tiles, heads_k, batch],
            block=[self.tiles.threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=1,
        )

    @cute.kernel
    def keys_kernel(
        self,
        mmas: KeyKernelMmas,
        copies: KeyKernelCopies,
        mdK: cute.Tensor,
        mdV: cute.Tensor,
        seq_info: cute.Tensor,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        layouts: KeySharedLayouts,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        n_tile, head_k, seq = cute.arch.block_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = cute.arch.make_warp_uniform(tidx // 128)
        tma_k, mK, tma_v, mV = copies.k, copies.mK, copies.v, copies.mV
        tma_q, mQ, tma_do, mdO = copies.q, copies.mQ, copies.do, copies.mdO
        tma_stats, mStats = copies.stats, copies.mStats
        sK_layout, sQ_layout = layouts.sK, layouts.sQ
        group = mQ.shape[2] // mK.shape[2]

        smem = SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        # K and V: one stage per consumer warpgroup, loaded once. Q and dO: a ring.
        kv_pipe = tma_pipeline(
            storage.kv_barriers.data_ptr(), self.tiles.consumer_warpgroups, WARPS_PER_WARPGROUP, self.kv_bytes
        )
        q_pipe = tma_pipeline(
            storage.q_barriers.data_ptr(),
            self.tiles.q_stages,
            WARPS_PER_WARPGROUP * self.tiles.consumer_warpgroups,
            self.q_bytes,
        )
        kv_producer, _ = kv_pipe.make_participants()
        q_producer, q_consumer = q_pipe.make_participants()
        order = warpgroup_order(storage.order_barriers.data_ptr(), self.tiles.consumer_warpgroups, wg)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sdO = storage.sdO.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        smem_tiles = KeySharedTiles(sK, sV, sQ, sdO)
        if cutlass.const_expr(self.with_dq):
            sdS_layout, sdQ_layout = layouts.sdS, layouts.sdQ
            sdS = storage.sdS.get_tensor(sdS_layout.outer, swizzle=sdS_layout.inner)
            sdQ = storage.sdQ.get_tensor(sdQ_layout.outer, swizzle=sdQ_layout.inner)
            smem_tiles = KeySharedTiles(sK, sV, sQ, sdO, sdS, sdQ)
        bounds = storage.bounds.get_tensor(self.bounds_layout())
        sStats = storage.sStats.get_tensor(self.staged_statistics_layout())

        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        seqlen = SeqlenInfo.load(seq_info, seq)
        mask = ChunkMask(seqlen, left_chunks)
        key_first = n_tile * self.tiles.tile_n

        if key_first < seqlen.seqlen_k:
            m_begin, m_end = self.tiles.blocks.query_tile_run(mask, key_first)
            if wg == 0:
                cute.arch.setmaxregister_decrease(PRODUCER_REGISTERS)
                if warp == 0:
                    self.produce_dkdv(
                        tma_k,
                        mK,
                        tma_v,
                        mV,
                        tma_q,
                        mQ,
                        tma_do,
                        mdO,
                        tma_stats,
                        mStats,
                        sK,
                        sV,
                        sQ,
                        sdO,
                        sStats,
                        kv_producer,
                        q_producer,
                        seqlen,
                        row_stats_start(seqlen.q_start, seq),
                        n_tile,
                        head_k,
                        group,
                        m_begin,
                        m_end,
                    )
                if cutlass.const_expr(self.with_dq):  # noqa: SIM102 (compile-time, then run-time)
                    if warp == 1:
                        tma_dq, mdQ = copies.dq, copies.mdQ
                        self.store_dq(
                            tma_dq, mdQ, smem_tiles.sdQ, seqlen.q_start, head_k, group, m_begin, m_end
                        )
            else:
                cute.arch.setmaxregister_increase(self.tiles.consumer_registers)
                self.consume_keys(
                    mmas,
                    smem_tiles,
                    bounds,
                    sStats,
                    mdK,
                    mdV,
                    kv_pipe,
                    q_consumer,
                    order,
                    wg - 1,
                    tidx % 128,
                    n_tile,
                    head_k,
                    group,
                    mask,
                    softmax_scale,
                    m_begin,
                    m_end,
                )

    @cute.jit
    def produce_dkdv(
        self,
        tma_k: cute.CopyAtom,
        mK: cute.Tensor,
        tma_v: cute.CopyAtom,
        mV: cute.Tensor,
        tma_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_do: cute.CopyAtom,
        mdO: cute.Tensor,
        tma_stats: cute.CopyAtom,
        mStats: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        sQ: cute.Tensor,
        sdO: cute.Tensor,
        sStats: cute.Tensor,
        kv_producer: pipeline.PipelineProducer,
        q_producer: pipeline.PipelineProducer,
        seqlen: SeqlenInfo,
        stats_start: cutlass.Int32,
        n_tile: cutlass.Int32,
        head_k: cutlass.Int32,
        group: cutlass.Int32,
        m_begin: cutlass.Int32,
        m_end: cutlass.Int32,
    ):
        """One warp: K and V of both warpgroups once, then Q, dO and the row statistics per
        (query head, query tile)."""
        q_start, k_start = seqlen.q_start, seqlen.k_start
        keys = (self.tiles.keys_per_warpgroup, self.tiles.head_dim)
        rows = (self.tiles.tile_m, self.tiles.head_dim)
        one = cute.make_layout(1)
        gK = cute.local_tile(cute.domain_offset((k_start, 0), mK[None, None, head_k]), keys, (None, 0))
        gV = cute.local_tile(cute.domain_offset((k_start, 0), mV[None, None, head_k]), keys, (None, 0))
        tKsK, tKgK = cpasync.tma_partition(
            tma_k, 0, one, cute.group_modes(sK, 0, 2), cute.group_modes(gK, 0, 2)
        )
        tVsV, tVgV = cpasync.tma_partition(
            tma_v, 0, one, cute.group_modes(sV, 0, 2), cute.group_modes(gV, 0, 2)
        )
        for i in cutlass.range_constexpr(self.tiles.consumer_warpgroups):
            handle = kv_producer.acquire_and_advance()
            tile = n_tile * self.tiles.consumer_warpgroups + i
            cute.copy(tma_k, tKgK[None, tile], tKsK[None, handle.index], tma_bar_ptr=handle.barrier)
            cute.copy(tma_v, tVgV[None, tile], tVsV[None, handle.index], tma_bar_ptr=handle.barrier)
        for h in cutlass.range(group, unroll=1):
            head = head_k * group + h
            gQ = cute.local_tile(cute.domain_offset((q_start, 0), mQ[None, None, head]), rows, (None, 0))
            gdO = cute.local_tile(cute.domain_offset((q_start, 0), mdO[None, None, head]), rows, (None, 0))
            tQsQ, tQgQ = cpasync.tma_partition(
                tma_q, 0, one, cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
            )
            tOsO, tOgO = cpasync.tma_partition(
                tma_do, 0, one, cute.group_modes(sdO, 0, 2), cute.group_modes(gdO, 0, 2)
            )
            gS = cute.local_tile(
                cute.domain_offset((stats_start, 0), mStats[None, None, head]),
                (self.tiles.tile_m, ROW_STATISTICS),
                (None, 0),
            )
            tSsS, tSgS = cpasync.tma_partition(
                tma_stats, 0, one, cute.group_modes(sStats, 0, 2), cute.group_modes(gS, 0, 2)
            )
            for m in cutlass.range(m_begin, m_end, unroll=1):
                handle = q_producer.acquire_and_advance()
                cute.copy(tma_q, tQgQ[None, m], tQsQ[None, handle.index], tma_bar_ptr=handle.barrier)
                cute.copy(tma_do, tOgO[None, m], tOsO[None, handle.index], tma_bar_ptr=handle.barrier)
                cute.copy(tma_stats, tSgS[None, m], tSsS[None, handle.index], tma_bar_ptr=handle.barrier)

    @cute.jit
    def consume_keys(
        self,
        mmas: KeyKernelMmas,
        smem: KeySharedTiles,
        bounds: cute.Tensor,
        sStats: cute.Tensor,
        mdK: cute.Tensor,
        mdV: cute.Tensor,
        kv_pipe: pipeline.PipelineTmaAsync,
        q_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        wg: cutlass.Int32,
        thread: cutlass.Int32,
        n_tile: cutlass.Int32,
        head_k: cutlass.Int32,
        group: cutlass.Int32,
        mask: ChunkMask,
        softmax_scale: cutlass.Float32,
        m_begin: cutlass.Int32,
        m_end: cutlass.Int32,
    ):
        """One warpgroup: 64 keys against every query tile that sees them (dK, dV in registers)
        and, with dQ, its head-dim slice of each tile's dQ, staged for the dQ warp."""
        st_mma, grad_mma = mmas.st, mmas.grad
        sK, sV, sQ, sdO = smem.sK, smem.sV, smem.sQ, smem.sdO
        seqlen = mask.seqlen
        d = self.tiles.head_dim
        st_thr = st_mma.get_slice(thread)
        grad_thr = grad_mma.get_slice(thread)
        tSrK = st_thr.make_fragment_A(st_thr.partition_A(sK))
        tSrV = st_thr.make_fragment_A(st_thr.partition_A(sV))
        tSrQ = st_thr.make_fragment_B(st_thr.partition_B(sQ))
        tSrdO = st_thr.make_fragment_B(st_thr.partition_B(sdO))
        # Q and dO tiles as the (head dim, queries) B operands of dK += dS^T Q and dV += P^T dO.
        sQt = cute.make_tensor(sQ.iterator, cute.select(sQ.layout, mode=[1, 0, 2]))
        sdOt = cute.make_tensor(sdO.iterator, cute.select(sdO.layout, mode=[1, 0, 2]))
        tGrQt = grad_thr.make_fragment_B(grad_thr.partition_B(sQt))
        tGrdOt = grad_thr.make_fragment_B(grad_thr.partition_B(sdOt))
        grad_shape = grad_thr.partition_shape_C((self.tiles.keys_per_warpgroup, d))
        acc_dk = grad_thr.make_fragment_C(grad_shape)
        acc_dv = grad_thr.make_fragment_C(grad_shape)
        acc_dk.fill(0.0)
        acc_dv.fill(0.0)
        grad_mma.set(warpgroup.Field.ACCUMULATE, True)
        acc_st_shape = st_thr.partition_shape_C((self.tiles.keys_per_warpgroup, self.tiles.tile_m))
        p_operand = cute.make_rmem_tensor(
            accumulator_as_operand_a(st_thr.make_fragment_C(acc_st_shape).layout), self.dtype
        )
        ds_operand = cute.make_rmem_tensor(
            accumulator_as_operand_a(st_thr.make_fragment_C(acc_st_shape).layout), self.dtype
        )
        tScS = rows_cols(
            st_thr.partition_C(cute.make_identity_tensor((self.tiles.keys_per_warpgroup, self.tiles.tile_m)))
        )

        dq_operands = None
        if cutlass.const_expr(self.with_dq):
            dq_mma = mmas.dq
            sdS, sdQ = smem.sdS, smem.sdQ
            dq_thr = dq_mma.get_slice(thread)
            dq_rows, dq_cols = self.tiles.dq_slice
            # dS^T of this warpgroup's keys into its half of each dS buffer, seen as (keys, queries).
            sdSt = cute.make_tensor(sdS.iterator, cute.select(sdS.layout, mode=[1, 0, 2]))
            sdSt_wg = cute.local_tile(
                sdSt, (self.tiles.keys_per_warpgroup, self.tiles.tile_m, DS_BUFFERS), (wg, 0, 0)
            )
            ds_store = None
            if cutlass.const_expr(self.tiles.ds_by_stmatrix):
                # stmatrix: a key's 8 consecutive queries are one 16-byte row of sdS, four 8 x 8
                # blocks per instruction instead of a 4-byte store per pair of queries.
                ds_store = cute.make_tiled_copy_C(
                    cute.make_copy_atom(warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype),
                    st_mma,
                ).get_slice(thread)
                if cutlass.const_expr(self.tiles.hoisted_ds_store):
                    tSsdS = HoistedStmatrixStore(ds_store, sdSt_wg)
                else:
                    tSsdS = ds_store.partition_D(sdSt_wg)
            else:
                tSsdS = st_thr.partition_C(sdSt_wg)
            # dQ slice = dS (all 128 keys) x K^T slice; K's two 64-key stages are two K-halves.
            # By rows: this warpgroup's query rows of dS and all of K^T; by columns: all of dS
            # and this warpgroup's head-dim columns of K^T.
            dq_column_block = wg
            if cutlass.const_expr(self.tiles.dq_by_rows):
                dq_column_block = 0
                sdS_rows = cute.local_tile(sdS, (dq_rows, self.tiles.tile_n, DS_BUFFERS), (wg, 0, 0))
                tDrdS = dq_thr.make_fragment_A(dq_thr.partition_A(sdS_rows))
            else:
                tDrdS = dq_thr.make_fragment_A(dq_thr.partition_A(sdS))
            sKt = cute.make_tensor(sK.iterator, cute.select(sK.layout, mode=[1, 0, 2]))
            tDrKt = dq_thr.make_fragment_B(
                dq_thr.partition_B(
                    cute.local_tile(
                        sKt,
                        (dq_cols, self.tiles.keys_per_warpgroup, self.tiles.consumer_warpgroups),
                        (dq_column_block, 0, 0),
                    )
                )
            )
            acc_dq = dq_thr.make_fragment_C(dq_thr.partition_shape_C((dq_rows, dq_cols)))
            dq_mma.set(warpgroup.Field.ACCUMULATE, True)  # acc_dq is zeroed per tile instead
            if cutlass.const_expr(self.tiles.hoisted_dq_staging):
                dq_staging = CarriedSwizzledStore(dq_mma, thread, sdQ[None, None, wg], acc_dq.layout)
            else:
                dq_staging = dq_thr.partition_C(sdQ[None, None, wg])
            dq_operands = DqSliceOperands(
                dq_mma=dq_mma, tSsdS=tSsdS, tDrdS=tDrdS, tDrKt=tDrKt, acc_dq=acc_dq, staging=dq_staging,
                ds_store=ds_store,
            )  # fmt: skip

        key_base = n_tile * self.tiles.tile_n + wg * self.tiles.keys_per_warpgroup
        scale_log2 = softmax_scale * LOG2_E
        kv_pipe.consumer_wait(loaded_once(self.tiles.consumer_warpgroups, wg))
        tSrK_wg = tSrK[None, None, None, wg]
        tSrV_wg = tSrV[None, None, None, wg]
        key_first = n_tile * self.tiles.tile_n
        key_last = cutlass.min(key_first + self.tiles.tile_n, seqlen.seqlen_k) - 1
        if cutlass.const_expr(self.with_dq):
            # Keys past the sequence end must get P = 0 here: their dS would reach dQ.
            key_last = key_first + self.tiles.tile_n - 1

        operands = KeyTileOperands(
            grad_mma=grad_mma, tSrK=tSrK_wg, tSrV=tSrV_wg, tSrQ=tSrQ, tSrdO=tSrdO, tGrQt=tGrQt,
            tGrdOt=tGrdOt, acc_dk=acc_dk, acc_dv=acc_dv, p_operand=p_operand, ds_operand=ds_operand,
            acc_st_shape=acc_st_shape,
        )  # fmt: skip
        keys = KeyColumns(
            tScS=tScS, key_base=key_base, sStats=sStats, bounds=bounds[None, None, wg],
            scale_log2=scale_log2, softmax_scale=softmax_scale,
        )  # fmt: skip
        tile = cutlass.Int32(0)  # counts query tiles: with dQ it picks the dS buffer
        # A query tile needs no mask when each of its rows sees all of the CTA's keys.
        full_begin, full_end = self.tiles.blocks.query_tiles_seeing_all(
            mask, key_first, key_last, m_begin, m_end
        )
        # Loop-carried addresses (not rematerialised by ptxas): the hoisted dS^T store's moves to
        # the other dS buffer with ``tile``; the dQ staging's is made opaque once a tile.
        ds_rows = dq_operands.tSsdS if self.tiles.hoisted_ds_store and self.with_dq else None
        dq_carried = dq_operands.staging if self.tiles.hoisted_dq_staging and self.with_dq else None
        for _ in cutlass.range(group, unroll=1):  # each query head of the group, as the producer loads them
            for m in cutlass.range(m_begin, m_end, unroll=1):
                buffer = tile % DS_BUFFERS
                query = QueryTileStep(m=m, mask=mask, buffer=buffer, wg=wg, thread=thread)
                step_dq = dq_operands
                if cutlass.const_expr(ds_rows is not None):
                    step_dq = dataclasses.replace(step_dq, tSsdS=ds_rows)
                if cutlass.const_expr(dq_carried is not None):
                    step_dq = dataclasses.replace(step_dq, staging=dq_carried)
                if m >= full_begin and m < full_end:
                    st_mma, q_consumer, order = self.tile_step(
                        False, st_mma, operands, step_dq, q_consumer, order, keys, query
                    )
                else:
                    st_mma, q_consumer, order = self.tile_step(
                        True, st_mma, operands, step_dq, q_consumer, order, keys, query
                    )
                if cutlass.const_expr(ds_rows is not None):
                    ds_rows = ds_rows.other_buffer(buffer)
                if cutlass.const_expr(dq_carried is not None):
                    dq_carried = dq_carried.next_tile()
                tile += 1

        out_dk = cute.make_rmem_tensor(acc_dk.layout, self.dtype)
        out_dk.store(acc_dk.load().to(self.dtype))
        out_dv = cute.make_rmem_tensor(acc_dv.layout, self.dtype)
        out_dv.store(acc_dv.load().to(self.dtype))
        if cutlass.const_expr(self.with_dq):
            # The other warpgroup's last dQ GEMM reads this warpgroup's K: wait before staging dK.
            sync_consumers(self.tiles.consumer_warpgroups)
        # K and V of this warpgroup are no longer read: stage the results there.
        key_rows = (self.tiles.keys_per_warpgroup, self.tiles.head_dim)
        for out, staging, mOut in ((out_dk, sK, mdK), (out_dv, sV, mdV)):
            store_rows(
                grad_thr,
                out,
                staging[None, None, wg],
                mOut,
                key_rows,
                wg,
                thread,
                seqlen.k_start,
                key_base,
                head_k,
                seqlen.seqlen_k,
            )

    @cute.jit
    def key_tile(
        self,
        masked: cutlass.Constexpr,
        st_mma: cute.TiledMma,
        operands: KeyTileOperands,
        dq_operands: DqSliceOperands | None,
        q_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        keys: KeyColumns,
        query: QueryTileStep,
    ):
        """S^T, dP^T for one query tile; P^T and scaled dS^T; dV += P^T dO and dK += dS^T Q; with
        dQ, also dS^T to shared memory, the dQ slice, and the slice staged for the dQ warp."""
        grad_mma, p_operand, ds_operand = operands.grad_mma, operands.p_operand, operands.ds_operand
        acc_dk, acc_dv, tGrQt, tGrdOt = operands.acc_dk, operands.acc_dv, operands.tGrQt, operands.tGrdOt
        acc_st, acc_dpt, handle = self.issue_st_dpt(st_mma, operands, q_consumer, order, False)
        row_first = query.m * self.tiles.tile_m
        staged = keys.sStats[None, None, handle.index]  # this tile's statistics, come with Q and dO
        if cutlass.const_expr(self.tiles.tile_m == WARPGROUP_THREADS):
            stat = self.load_row_statistics(masked, keys, query, row_first, staged)
            warpgroup.wait_group(0)
            self.row_probabilities_and_ds(masked, acc_st, acc_dpt, keys, stat, query, staged)
        else:
            stat = self.load_statistic(row_first, query.mask.seqlen, query.thread, staged)
            warpgroup.wait_group(0)
            self.probabilities_and_ds(masked, acc_st, acc_dpt, keys, stat, query, row_first, staged)
        as_accumulator(p_operand, acc_st).store(acc_st.load().to(self.dtype))
        ds_acc = as_accumulator(ds_operand, acc_dpt)
        ds_acc.store(acc_dpt.load().to(self.dtype))
        if cutlass.const_expr(self.with_dq):
            dq_operands.acc_dq.fill(0.0)

        # dV and dK need only this warpgroup's registers: with dQ they run while dS goes to
        # shared memory and the other warpgroup catches up at the barrier.
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(p_operand, mode=[2])):
            cute.gemm(grad_mma, acc_dv, p_operand[None, None, k], tGrdOt[None, None, k, handle.index], acc_dv)
        for k in cutlass.range_constexpr(cute.size(ds_operand, mode=[2])):
            cute.gemm(grad_mma, acc_dk, ds_operand[None, None, k], tGrQt[None, None, k, handle.index], acc_dk)
        warpgroup.commit_group()
        if cutlass.const_expr(self.with_dq):
            self.dq_tile(dq_operands, ds_acc, query.buffer)
        warpgroup.wait_group(0)
        handle.release()
        if cutlass.const_expr(self.with_dq):
            self.stage_dq(dq_operands, query.wg)
        return st_mma, q_consumer, order

    @cute.jit
    def issue_st_dpt(
        self,
        st_mma: cute.TiledMma,
        operands: KeyTileOperands,
        q_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        split: cutlass.Constexpr,
    ):
        """Once the next Q/dO stage is in and it is this warpgroup's turn: S^T = K Q^T and
        dP^T = V dO^T issued, as one commit group, or with ``split`` as two (S^T first, so it
        can be waited for alone). Returns both accumulators and the stage's handle."""
        tSrK, tSrV, tSrQ, tSrdO = operands.tSrK, operands.tSrV, operands.tSrQ, operands.tSrdO
        acc_st = cute.make_rmem_tensor(operands.acc_st_shape, cutlass.Float32)
        acc_dpt = cute.make_rmem_tensor(operands.acc_st_shape, cutlass.Float32)
        handle = q_consumer.wait_and_advance()
        if cutlass.const_expr(self.tiles.ping_pong):
            order.wait()
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(tSrK, mode=[2])):
            st_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(st_mma, acc_st, tSrK[None, None, k], tSrQ[None, None, k, handle.index], acc_st)
        if cutlass.const_expr(split):
            warpgroup.commit_group()
        for k in cutlass.range_constexpr(cute.size(tSrV, mode=[2])):
            st_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(st_mma, acc_dpt, tSrV[None, None, k], tSrdO[None, None, k, handle.index], acc_dpt)
        warpgroup.commit_group()
        if cutlass.const_expr(self.tiles.ping_pong):
            order.arrive()
        return acc_st, acc_dpt, handle

    @cute.jit
    def key_tile_split(
        self,
        masked: cutlass.Constexpr,
        st_mma: cute.TiledMma,
        operands: KeyTileOperands,
        dq_operands: DqSliceOperands | None,
        q_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        keys: KeyColumns,
        query: QueryTileStep,
    ):
        """``key_tile`` in FlashAttention's sm90 order (``KeyTiles.split_commits``): S^T and dP^T
        are two commit groups, so P^T is computed as soon as S^T is done, while dP^T's GEMM runs
        (the exponentials no longer wait for both GEMMs). dV += P^T dO is issued right then, so
        dS^T is computed while it runs (and ptxas cannot move the dP^T wait above the
        exponentials: without it, 26 of 32 went below). dQ and then dK += dS^T Q follow the dS
        barrier, so the dQ slice is staged for the dQ warp while dK's GEMM runs instead of after
        every GEMM of the tile."""
        grad_mma, p_operand, ds_operand = operands.grad_mma, operands.p_operand, operands.ds_operand
        acc_dk, acc_dv, tGrQt, tGrdOt = operands.acc_dk, operands.acc_dv, operands.tGrQt, operands.tGrdOt
        row_first = query.m * self.tiles.tile_m
        acc_st, acc_dpt, handle = self.issue_st_dpt(st_mma, operands, q_consumer, order, True)
        # Read after the GEMMs are issued: read before the Q/dO wait, the values live across the
        # wait and ptxas serialised every WGMMA (336 bytes of stack).
        staged = keys.sStats[None, None, handle.index]  # this tile's statistics, come with Q and dO
        stat = self.load_half_row_statistics(masked, keys, query, row_first, staged)
        self.share_row_statistics(masked, keys, stat, query, staged)
        warpgroup.wait_group(1)  # S^T done, dP^T's GEMM runs
        self.row_columns(masked, acc_st, acc_dpt, keys, staged, True, False)
        as_accumulator(p_operand, acc_st).store(acc_st.load().to(self.dtype))
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(p_operand, mode=[2])):
            cute.gemm(grad_mma, acc_dv, p_operand[None, None, k], tGrdOt[None, None, k, handle.index], acc_dv)
        warpgroup.commit_group()
        warpgroup.wait_group(1)  # dP^T done, dV's GEMM runs
        self.row_columns(masked, acc_st, acc_dpt, keys, staged, False, True)
        ds_acc = as_accumulator(ds_operand, acc_dpt)
        ds_acc.store(acc_dpt.load().to(self.dtype))
        dq_operands.acc_dq.fill(0.0)
        warpgroup.fence()
        self.dq_tile(dq_operands, ds_acc, query.buffer)
        for k in cutlass.range_constexpr(cute.size(ds_operand, mode=[2])):
            cute.gemm(grad_mma, acc_dk, ds_operand[None, None, k], tGrQt[None, None, k, handle.index], acc_dk)
        warpgroup.commit_group()
        warpgroup.wait_group(1)  # dV and dQ done; dK's GEMM runs while the slice is staged
        self.stage_dq(dq_operands, query.wg)
        warpgroup.wait_group(0)
        handle.release()
        return st_mma, q_consumer, order

    @cute.jit
    def dq_tile(self, dq_operands: DqSliceOperands, ds_acc: cute.Tensor, buffer):
        """dS^T to this warpgroup's half of a dS buffer; once both halves are there, the dQ slice
        = dS K over all 128 keys (issued, not waited for)."""
        dq_mma, tSsdS, tDrdS, tDrKt = (
            dq_operands.dq_mma,
            dq_operands.tSsdS,
            dq_operands.tDrdS,
            dq_operands.tDrKt,
        )
        acc_dq, ds_store = dq_operands.acc_dq, dq_operands.ds_store
        if cutlass.const_expr(self.tiles.hoisted_ds_store):
            tSsdS(ds_acc)
        elif cutlass.const_expr(self.tiles.ds_by_stmatrix):
            cute.copy(ds_store, ds_store.retile(ds_acc), tSsdS[None, None, None, buffer])
        else:
            cute.autovec_copy(ds_acc, tSsdS[None, None, None, buffer])
        cute.arch.fence_view_async_shared()
        sync_consumers(self.tiles.consumer_warpgroups)
        key_blocks = cute.size(tDrKt, mode=[2])
        for k in cutlass.range_constexpr(cute.size(tDrdS, mode=[2])):
            cute.gemm(
                dq_mma,
                acc_dq,
                tDrdS[None, None, k, buffer],
                tDrKt[None, None, k % key_blocks, k // key_blocks],
                acc_dq,
            )
        warpgroup.commit_group()

    @cute.jit
    def stage_dq(self, dq_operands: DqSliceOperands, wg: cutlass.Int32):
        """The finished dQ slice to shared memory for the dQ warp, once it has sent the previous
        one off."""
        acc_dq, dq_staging = dq_operands.acc_dq, dq_operands.staging
        DqHandshake.wait(NamedBarrier.DQ_EMPTY_WG, wg)
        if cutlass.const_expr(self.tiles.hoisted_dq_staging):
            dq_staging(acc_dq)
        else:
            cute.autovec_copy(acc_dq, dq_staging)
        cute.arch.fence_view_async_shared()
        DqHandshake.arrive(NamedBarrier.DQ_FULL_WG, wg)

    def staged_statistics_layout(self):
        """Per Q/dO stage, its query tile's statistics as the prologue lays them out (and TMA
        copies them): LSE * log2(e) of the tile's rows, then their delta * softmax scale."""
        rows = self.tiles.tile_m
        return cute.make_layout(
            (rows, ROW_STATISTICS, self.tiles.q_stages), stride=(1, rows, ROW_STATISTICS * rows)
        )

    def bounds_layout(self):
        """Per warpgroup, a masked tile's visible keys [first, past-last) of each query row
        (``row_statistics``), relative to the warpgroup's first key and clipped to its keys, so
        int16; rows contiguous per bound (``column_pair``). One element where they are not
        shared (keys are found per column)."""
        rows = self.tiles.tile_m if self.tiles.row_statistics else 1
        return cute.make_layout(
            (rows, KEY_BOUNDS, self.tiles.consumer_warpgroups), stride=(1, rows, KEY_BOUNDS * rows)
        )

    @cute.jit
    def load_row_statistics(
        self,
        masked: cutlass.Constexpr,
        keys: KeyColumns,
        query: QueryTileStep,
        row_first: cutlass.Int32,
        staged: cute.Tensor,
    ) -> RowStatistics:
        """128-row tiles: LSE * log2(e) and delta * softmax scale of row ``thread`` from the
        tile's ``staged`` statistics (scaled by the prologue), read while the tile's GEMMs run,
        and for a masked tile the row's visible keys [lo, hi) relative to the warpgroup's first
        key: one row's chunk arithmetic per thread instead of one per column it holds. Queries
        past the sequence get LSE +inf, so P = 0 and they add nothing."""
        key_base = keys.key_base
        mask, thread = query.mask, query.thread
        seqlen = mask.seqlen
        row = row_first + thread
        lse_log2 = cutlass.Float32.inf
        delta_scaled = cutlass.Float32(0.0)
        if row < seqlen.seqlen_q:
            lse_log2 = staged[thread, 0]
            delta_scaled = staged[thread, 1]
        lo = cutlass.Int32(0)
        hi = cutlass.Int32(0)
        if cutlass.const_expr(masked):
            keys_lo, keys_hi = mask.key_bounds(row)
            lo = self.clipped_key(keys_lo - key_base)
            hi = self.clipped_key(keys_hi - key_base)
        return RowStatistics(lse_log2=lse_log2, delta_scaled=delta_scaled, lo=lo, hi=hi)

    @cute.jit
    def row_probabilities_and_ds(
        self,
        masked: cutlass.Constexpr,
        acc_st: cute.Tensor,
        acc_dpt: cute.Tensor,
        keys: KeyColumns,
        stat: RowStatistics,
        query: QueryTileStep,
        staged: cute.Tensor,
    ):
        """``probabilities_and_ds`` for 128-row tiles: each thread shares its row's statistics
        (and, masked, its visible keys) through shared memory."""
        self.share_row_statistics(masked, keys, stat, query, staged)
        self.row_columns(masked, acc_st, acc_dpt, keys, staged, True, True)

    @cute.jit
    def share_row_statistics(
        self,
        masked: cutlass.Constexpr,
        keys: KeyColumns,
        stat: RowStatistics | HalfRowStatistic,
        query: QueryTileStep,
        staged: cute.Tensor,
    ):
        """The row statistics (``KeyTiles.row_statistics``) back into the tile's ``staged``
        ones, where each column reads them (unchanged in the sequence; LSE +inf and delta 0 past
        its end, identical from both warpgroups), the visible keys of a masked tile to this
        warpgroup's ``bounds``, then the warpgroup's barrier. 128-row tiles: thread t row t's
        values; 64-row tiles (``load_half_row_statistics``): thread t < 64 row t's LSE and
        first key, thread t + 64 row t's delta and past-last key. (Read, then written back,
        before the barrier: without it, ptxas serialised every WGMMA of the kernel.)"""
        bounds = keys.bounds
        wg, thread = query.wg, query.thread
        if cutlass.const_expr(self.tiles.tile_m == WARPGROUP_THREADS):
            staged[thread, 0] = stat.lse_log2
            staged[thread, 1] = stat.delta_scaled
            if cutlass.const_expr(masked):
                bounds[thread, 0] = stat.lo.to(cutlass.Int16)
                bounds[thread, 1] = stat.hi.to(cutlass.Int16)
        else:
            row = thread % self.tiles.tile_m
            half = thread // self.tiles.tile_m
            staged[row, half] = stat.value
            if cutlass.const_expr(masked):
                bounds[row, half] = stat.bound.to(cutlass.Int16)
        # Before the TMA that refills this stage once it is released (the async proxy), these
        # writes are ordered by the fence after the tile's dS stores (``dq_tile``): every tiling
        # that shares row statistics stages dQ.
        assert self.with_dq, "row statistics are shared only by the fused kernel's tilings"
        sync_warpgroup(wg)

    def clipped_key(self, key):
        """A key relative to the warpgroup's first, clipped to [0, its keys]: the same test
        against the warpgroup's keys, and it fits in int16."""
        return cutlass.min(cutlass.max(key, 0), self.tiles.keys_per_warpgroup)

    @cute.jit
    def row_columns(
        self,
        masked: cutlass.Constexpr,
        acc_st: cute.Tensor,
        acc_dpt: cute.Tensor,
        keys: KeyColumns,
        staged: cute.Tensor,
        probabilities: cutlass.Constexpr,
        ds: cutlass.Constexpr,
    ):
        """Per column (query) from the shared row statistics: with ``probabilities``, P^T =
        exp(S^T * scale - LSE) in place of S^T (0 outside the mask); with ``ds``, dS^T =
        P^T (dP^T * scale - delta * scale) in place of dP^T. Both at once when S^T and dP^T were
        waited for together; apart when P^T is computed while dP^T's GEMM still runs."""
        tScS, bounds, scale_log2, softmax_scale = keys.tScS, keys.bounds, keys.scale_log2, keys.softmax_scale
        st = rows_cols(acc_st)
        dpt = rows_cols(acc_dpt)
        pairs = cutlass.const_expr(self.tiles.split_commits)
        if cutlass.const_expr(pairs):
            # A WGMMA accumulator holds each row's values in pairs of adjacent columns.
            assert cute.size(st, mode=[1]) % 2 == 0 and acc_st.layout.shape[0][0] == 2, acc_st.layout
        # What this pass reads, by name: (tensor, value index), from the staged statistics and,
        # masked, the warpgroup's bounds.
        wanted = {}
        if cutlass.const_expr(probabilities):
            wanted["lse"] = (staged, 0)
        if cutlass.const_expr(ds):
            wanted["delta"] = (staged, 1)
        if cutlass.const_expr(masked and probabilities):
            wanted["lo"] = (bounds, 0)
            wanted["hi"] = (bounds, 1)
        for c in cutlass.range_constexpr(cute.size(st, mode=[1])):
            column = tScS[0, c][1]
            if cutlass.const_expr(not pairs):
                read = {name: t[column, v] for name, (t, v) in wanted.items()}
            else:
                if cutlass.const_expr(c % 2 == 0):  # columns c, c + 1: adjacent queries, the first even
                    loaded = {name: column_pair(t, column, v) for name, (t, v) in wanted.items()}
                read = {name: pair[c % 2] for name, pair in loaded.items()}
            lse_log2, delta_scaled = read.get("lse"), read.get("delta")
            lo, hi = cutlass.Int32(0), cutlass.Int32(0)
            if cutlass.const_expr(masked and probabilities):
                lo, hi = cutlass.Int32(read["lo"]), cutlass.Int32(read["hi"])
            for r in cutlass.range_constexpr(cute.size(st, mode=[0])):
                if cutlass.const_expr(probabilities):
                    p = cute.math.exp2(st[r, c] * scale_log2 - lse_log2, fastmath=True)
                    if cutlass.const_expr(masked):
                        key = tScS[r, 0][0]
                        if key < lo or key >= hi:
                            p = cutlass.Float32(0.0)
                    st[r, c] = p
                else:
                    p = st[r, c]
                if cutlass.const_expr(ds):
                    dpt[r, c] = p * (dpt[r, c] * softmax_scale - delta_scaled)

    @cute.jit
    def load_half_row_statistics(
        self,
        masked: cutlass.Constexpr,
        keys: KeyColumns,
        query: QueryTileStep,
        row_first: cutlass.Int32,
        staged: cute.Tensor,
    ) -> HalfRowStatistic:
        """64-row tiles in the split order: two threads per query row, each reading one
        statistic of the tile's ``staged`` ones while the tile's GEMMs run: thread t < 64
        LSE * log2(e) of row t and, masked, its first visible key; thread t + 64 delta * softmax
        scale of row t and its past-last visible key (keys relative to the warpgroup's first).
        Bounds once per row: not once per column.
        Queries past the sequence get LSE +inf, so P = 0 and they add nothing."""
        key_base = keys.key_base
        mask, thread = query.mask, query.thread
        seqlen = mask.seqlen
        row = row_first + thread % self.tiles.tile_m
        value = cutlass.Float32(0.0)
        if thread < self.tiles.tile_m:
            value = cutlass.Float32.inf
        # Branches, not an indexed read: one read indexed by thread // 64 made ptxas serialise
        # every WGMMA of the kernel (stop 51).
        if row < seqlen.seqlen_q:
            if thread < self.tiles.tile_m:
                value = staged[thread % self.tiles.tile_m, 0]
            else:
                value = staged[thread % self.tiles.tile_m, 1]
        bound = cutlass.Int32(0)
        if cutlass.const_expr(masked):
            keys_lo, keys_hi = mask.key_bounds(row)
            bound = self.clipped_key(keys_hi - key_base)
            if thread < self.tiles.tile_m:
                bound = self.clipped_key(keys_lo - key_base)
        return HalfRowStatistic(value=value, bound=bound)

    @cute.jit
    def load_statistic(self, row_first: cutlass.Int32, seqlen: SeqlenInfo, thread, staged: cute.Tensor):
        """64-row tiles: one per-query statistic per thread of the tile's ``staged`` ones, read
        while the tile's GEMMs run: LSE * log2(e) of row ``thread`` for threads 0-63, delta *
        softmax scale of row ``thread - 64`` for 64-127. Queries past the sequence get LSE
        +inf, so P = 0 and they add nothing (to dQ either)."""
        row = row_first + thread % self.tiles.tile_m
        stat = cutlass.Float32(0.0)
        if thread < self.tiles.tile_m:
            stat = cutlass.Float32.inf
        if row < seqlen.seqlen_q:
            if thread < self.tiles.tile_m:
                stat = staged[thread % self.tiles.tile_m, 0]
            else:
                stat = staged[thread % self.tiles.tile_m, 1]
        return stat

    @cute.jit
    def probabilities_and_ds(
        self,
        masked: cutlass.Constexpr,
        acc_st: cute.Tensor,
        acc_dpt: cute.Tensor,
        keys: KeyColumns,
        stat: cutlass.Float32,
        query: QueryTileStep,
        row_first: cutlass.Int32,
        staged: cute.Tensor,
    ):
        """After the S^T/dP^T wait: share the statistics through shared memory, then turn S^T
        into P^T = exp(S^T * scale - LSE) (0 outside the mask) and dP^T into
        dS^T = P^T (dP^T - delta) * scale, in place. dS carries the softmax scale, so dK and dQ
        need no scaling afterwards."""
        tScS, key_base, scale_log2, softmax_scale = (
            keys.tScS,
            keys.key_base,
            keys.scale_log2,
            keys.softmax_scale,
        )
        mask, wg, thread = query.mask, query.wg, query.thread
        stats = staged
        stats[thread % self.tiles.tile_m, thread // self.tiles.tile_m] = stat
        if cutlass.const_expr(not self.with_dq):  # with dQ, the fence after the dS stores does it
            cute.arch.fence_view_async_shared()  # before the TMA that refills the stage
        sync_warpgroup(wg)
        st = rows_cols(acc_st)
        dpt = rows_cols(acc_dpt)
        for c in cutlass.range_constexpr(cute.size(st, mode=[1])):
            column = tScS[0, c][1]
            lse_log2 = stats[column, 0]
            delta_scaled = stats[column, 1]
            lo = cutlass.Int32(0)
            hi = cutlass.Int32(0)
            if cutlass.const_expr(masked):
                lo, hi = mask.key_bounds(row_first + column)
            for r in cutlass.range_constexpr(cute.size(st, mode=[0])):
                p = cute.math.exp2(st[r, c] * scale_log2 - lse_log2, fastmath=True)
                if cutlass.const_expr(masked):
                    key = key_base + tScS[r, 0][0]
                    if key < lo or key >= hi:
                        p = cutlass.Float32(0.0)
                st[r, c] = p
                dpt[r, c] = p * (dpt[r, c] * softmax_scale - delta_scaled)

    @cute.jit
    def store_dq(
        self,
        tma_dq: cute.CopyAtom,
        mdQ: cute.Tensor,
        sdQ: cute.Tensor,
        q_start: cutlass.Int32,
        head_k: cutlass.Int32,
        group: cutlass.Int32,
        m_begin: cutlass.Int32,
        m_end: cutlass.Int32,
    ):
        """The dQ warp (a producer-warpgroup warp): per query tile, each consumer warpgroup's
        staged dQ slice goes to the float32 dQ buffer as a TMA reduce-add; once the copy has read
        shared memory, the warpgroup may stage its next slice. Keeps this off the GEMM warps."""
        tiles = group * (m_end - m_begin)
        for w in cutlass.range_constexpr(self.tiles.consumer_warpgroups):
            if tiles > 0:
                DqHandshake.arrive(NamedBarrier.DQ_EMPTY_WG, w)
        tile = cutlass.Int32(0)
        for h in cutlass.range(group, unroll=1):
            head = head_k * group + h
            for m in cutlass.range(m_begin, m_end, unroll=1):
                rows = cute.domain_offset((q_start + m * self.tiles.tile_m, 0), mdQ[None, None, head])
                # Slice w of the tile: its w-th row block (by rows) or column block (by columns).
                blocks = (None, 0) if cutlass.const_expr(self.tiles.dq_by_rows) else (0, None)
                gdQ = cute.local_tile(rows, self.tiles.dq_slice, blocks)
                tRsR, tRgR = cpasync.tma_partition(
                    tma_dq, 0, cute.make_layout(1), cute.group_modes(sdQ, 0, 2), cute.group_modes(gdQ, 0, 2)
                )
                tile += 1
                for w in cutlass.range_constexpr(self.tiles.consumer_warpgroups):
                    DqHandshake.wait(NamedBarrier.DQ_FULL_WG, w)
                    cute.copy(tma_dq, tRsR[None, w], tRgR[None, w])
                    cute.arch.cp_async_bulk_commit_group()
                    cute.arch.cp_async_bulk_wait_group(0, read=True)
                    if tile < tiles:  # the consumers stage exactly ``tiles`` slices
                        DqHandshake.arrive(NamedBarrier.DQ_EMPTY_WG, w)
        cute.arch.cp_async_bulk_wait_group(0, read=True)
