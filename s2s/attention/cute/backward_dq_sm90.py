"""dQ of chunk-causal attention for Hopper (sm_90a), in the CuTe DSL.

The query side of the backward pass walks exactly the key tiles the forward walked (same CTA
shape, same masked / full / masked runs), so no query tile ever touches a hidden key tile. Per
key tile it recomputes S = Q K^T, forms P = exp(S - LSE) from the forward's LSE, computes
dP = dO V^T, dS = P * (dP - delta) with delta = rowsum(dO * O), and accumulates dQ += dS K in
fp32 registers. Each CTA owns its dQ rows, so the result needs no atomics and is deterministic.

K and V tiles are both loaded K-major (head dim contiguous, as they sit in memory); the dQ GEMM
reads the K tile through a transposed view of the same shared memory.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.memory import SmemAllocator
from cutlass.tensor_utils import LayoutEnum

from s2s.attention.cute.block_info import KeyTileRuns
from s2s.attention.cute.epilogue import store_rows
from s2s.attention.cute.fragments import accumulator_as_operand_a, as_accumulator, rows_cols
from s2s.attention.cute.mask import ChunkMask, RowKeyBounds
from s2s.attention.cute.pipeline import loaded_once, query_side_pipelines
from s2s.attention.cute.seqlen_info import SeqlenInfo
from s2s.attention.cute.softmax import LOG2_E
from s2s.attention.cute.tile_operands import DqOperands, DqRows
from s2s.attention.cute.tile_scheduler import QueryTile
from s2s.attention.cute.tiles import PRODUCER_REGISTERS, ForwardTiles
from s2s.attention.cute.views import rows_view, stats_view, table_view


class ChunkAttentionBackwardDqSm90:
    """dQ kernel: the forward's tiling (``ForwardTiles``) and key-tile runs, four GEMMs per key
    tile."""

    def __init__(self, tiles: ForwardTiles):
        self.tiles = tiles

    @cute.jit
    def __call__(
        self,
        q: cute.Pointer,  # (total_q, Hq, D)
        k: cute.Pointer,  # (total_k, Hk, D)
        v: cute.Pointer,  # (total_k, Hk, D)
        do: cute.Pointer,  # (total_q, Hq, D)
        lse: cute.Pointer,  # (Hq, total_q) fp32, natural log, from the forward
        delta: cute.Pointer,  # (Hq, total_q) fp32: rowsum(dO * O)
        dq: cute.Pointer,  # (total_q, Hq, D) out
        seq: cute.Pointer,  # (B, 8) int32
        total_q: cutlass.Int32,
        total_k: cutlass.Int32,
        heads_q: cutlass.Int32,
        heads_k: cutlass.Int32,
        batch: cutlass.Int32,
        grid_tiles: cutlass.Int32,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        stream: cuda.CUstream,
    ):
        d = self.tiles.head_dim
        mQ, mdO, mdQ = (rows_view(p, total_q, heads_q, d) for p in (q, do, dq))
        mK, mV = (rows_view(p, total_k, heads_k, d) for p in (k, v))
        mLSE, mDelta = stats_view(lse, total_q, heads_q), stats_view(delta, total_q, heads_q)
        seq_info = table_view(seq, batch)
        self.dtype = mQ.element_type

        s_shape = (
            self.tiles.rows_per_warpgroup,
            self.tiles.tile_n,
            d,
        )  # S and dP: (rows, keys), K = head dim
        dq_shape = (self.tiles.rows_per_warpgroup, d, self.tiles.tile_n)  # dQ: (rows, head dim), K = keys
        k_major = cute.nvgpu.OperandMajorMode.K
        mn_major = cute.nvgpu.OperandMajorMode.MN
        s_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, k_major, k_major, cutlass.Float32, (1, 1, 1), s_shape[:2]
        )
        dq_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            k_major,
            mn_major,
            cutlass.Float32,
            (1, 1, 1),
            dq_shape[:2],
            warpgroup.OperandSource.RMEM,
        )
        sQ_layout = sm90_utils.make_smem_layout_a(
            LayoutEnum.from_tensor(mQ), s_shape, self.dtype, self.tiles.consumer_warpgroups
        )
        sK_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mK), s_shape, self.dtype, self.tiles.kv_stages
        )
        load = cpasync.CopyBulkTensorTileG2SOp()
        q_smem = cute.slice_(sQ_layout, (None, None, 0))
        k_smem = cute.slice_(sK_layout, (None, None, 0))
        tma_q, tma_mQ = cpasync.make_tiled_tma_atom(load, mQ, q_smem, (self.tiles.rows_per_warpgroup, d))
        tma_do, tma_mdO = cpasync.make_tiled_tma_atom(load, mdO, q_smem, (self.tiles.rows_per_warpgroup, d))
        tma_k, tma_mK = cpasync.make_tiled_tma_atom(load, mK, k_smem, (self.tiles.tile_n, d))
        tma_v, tma_mV = cpasync.make_tiled_tma_atom(load, mV, k_smem, (self.tiles.tile_n, d))
        self.q_bytes = 2 * cute.size_in_bytes(self.dtype, q_smem)  # Q and dO share a stage
        self.kv_bytes = cute.size_in_bytes(self.dtype, k_smem)

        @cute.struct
        class SharedStorage:
            q_barriers: cute.struct.MemRange[cutlass.Int64, self.tiles.consumer_warpgroups * 2]
            kv_barriers: cute.struct.MemRange[cutlass.Int64, self.tiles.kv_stages * 2]
            order_barriers: cute.struct.MemRange[cutlass.Int64, self.tiles.consumer_warpgroups]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sdO: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sKV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]

        self.shared_storage = SharedStorage
        self.dq_kernel(
            s_mma,
            dq_mma,
            tma_q,
            tma_mQ,
            tma_do,
            tma_mdO,
            tma_k,
            tma_mK,
            tma_v,
            tma_mV,
            mdQ,
            mLSE,
            mDelta,
            seq_info,
            left_chunks,
            softmax_scale,
            sQ_layout,
            sK_layout,
        ).launch(
            grid=[grid_tiles, heads_q, batch],
            block=[self.tiles.threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=1,
        )

    @cute.kernel
    def dq_kernel(
        self,
        s_mma: cute.TiledMma,
        dq_mma: cute.TiledMma,
        tma_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_do: cute.CopyAtom,
        mdO: cute.Tensor,
        tma_k: cute.CopyAtom,
        mK: cute.Tensor,
        tma_v: cute.CopyAtom,
        mV: cute.Tensor,
        mdQ: cute.Tensor,
        mLSE: cute.Tensor,
        mDelta: cute.Tensor,
        seq_info: cute.Tensor,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        tile = QueryTile.heaviest_first(mK.shape[2])
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = cute.arch.make_warp_uniform(tidx // 128)

        smem = SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        q_pipe, kv_pipe, order = query_side_pipelines(
            storage, self.tiles.consumer_warpgroups, self.tiles.kv_stages, self.q_bytes, self.kv_bytes, wg
        )
        q_producer, _ = q_pipe.make_participants()
        kv_producer, kv_consumer = kv_pipe.make_participants()
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sdO = storage.sdO.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sKV = storage.sKV.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)

        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        seqlen = SeqlenInfo.load(seq_info, tile.seq)
        mask = ChunkMask(seqlen, left_chunks)
        row_first = tile.m_tile * self.tiles.tile_m

        if row_first < seqlen.seqlen_q:
            runs = self.tiles.blocks.key_tile_runs(mask, row_first)

            if wg == 0:
                cute.arch.setmaxregister_decrease(PRODUCER_REGISTERS)
                if warp == 0:
                    self.produce_dq(
                        tma_q,
                        mQ,
                        tma_do,
                        mdO,
                        tma_k,
                        mK,
                        tma_v,
                        mV,
                        sQ,
                        sdO,
                        sKV,
                        q_producer,
                        kv_producer,
                        seqlen,
                        tile,
                        runs,
                    )
            else:
                cute.arch.setmaxregister_increase(self.tiles.consumer_registers)
                self.consume_dq(
                    s_mma,
                    dq_mma,
                    sQ,
                    sdO,
                    sKV,
                    mdQ,
                    mLSE,
                    mDelta,
                    q_pipe,
                    kv_consumer,
                    order,
                    wg - 1,
                    tidx % 128,
                    tile,
                    mask,
                    softmax_scale,
                    runs,
                )

    @cute.jit
    def produce_dq(
        self,
        tma_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_do: cute.CopyAtom,
        mdO: cute.Tensor,
        tma_k: cute.CopyAtom,
        mK: cute.Tensor,
        tma_v: cute.CopyAtom,
        mV: cute.Tensor,
        sQ: cute.Tensor,
        sdO: cute.Tensor,
        sKV: cute.Tensor,
        q_producer: pipeline.PipelineProducer,
        kv_producer: pipeline.PipelineProducer,
        seqlen: SeqlenInfo,
        tile: QueryTile,
        runs: KeyTileRuns,
    ):
        """One warp: Q and dO of every warpgroup (one stage each), then K and V tile by tile."""
        rows = (self.tiles.rows_per_warpgroup, self.tiles.head_dim)
        keys = (self.tiles.tile_n, self.tiles.head_dim)
        q_start, k_start = seqlen.q_start, seqlen.k_start
        gQ = cute.local_tile(cute.domain_offset((q_start, 0), mQ[None, None, tile.head]), rows, (None, 0))
        gdO = cute.local_tile(cute.domain_offset((q_start, 0), mdO[None, None, tile.head]), rows, (None, 0))
        gK = cute.local_tile(cute.domain_offset((k_start, 0), mK[None, None, tile.head_k]), keys, (None, 0))
        gV = cute.local_tile(cute.domain_offset((k_start, 0), mV[None, None, tile.head_k]), keys, (None, 0))
        one = cute.make_layout(1)
        tQsQ, tQgQ = cpasync.tma_partition(
            tma_q, 0, one, cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
        )
        tOsO, tOgO = cpasync.tma_partition(
            tma_do, 0, one, cute.group_modes(sdO, 0, 2), cute.group_modes(gdO, 0, 2)
        )
        tKsK, tKgK = cpasync.tma_partition(
            tma_k, 0, one, cute.group_modes(sKV, 0, 2), cute.group_modes(gK, 0, 2)
        )
        tVsV, tVgV = cpasync.tma_partition(
            tma_v, 0, one, cute.group_modes(sKV, 0, 2), cute.group_modes(gV, 0, 2)
        )
        for i in cutlass.range_constexpr(self.tiles.consumer_warpgroups):
            handle = q_producer.acquire_and_advance()
            m = tile.m_tile * self.tiles.consumer_warpgroups + i
            cute.copy(tma_q, tQgQ[None, m], tQsQ[None, handle.index], tma_bar_ptr=handle.barrier)
            cute.copy(tma_do, tOgO[None, m], tOsO[None, handle.index], tma_bar_ptr=handle.barrier)
        for n in cutlass.range(runs.begin, runs.end, unroll=1):
            handle = kv_producer.acquire_and_advance()
            cute.copy(tma_k, tKgK[None, n], tKsK[None, handle.index], tma_bar_ptr=handle.barrier)
            handle = kv_producer.acquire_and_advance()
            cute.copy(tma_v, tVgV[None, n], tVsV[None, handle.index], tma_bar_ptr=handle.barrier)

    @cute.jit
    def consume_dq(
        self,
        s_mma: cute.TiledMma,
        dq_mma: cute.TiledMma,
        sQ: cute.Tensor,
        sdO: cute.Tensor,
        sKV: cute.Tensor,
        mdQ: cute.Tensor,
        mLSE: cute.Tensor,
        mDelta: cute.Tensor,
        q_pipe: pipeline.PipelineTmaAsync,
        kv_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        wg: cutlass.Int32,
        thread: cutlass.Int32,
        tile: QueryTile,
        mask: ChunkMask,
        softmax_scale: cutlass.Float32,
        runs: KeyTileRuns,
    ):
        """One warpgroup: 64 query rows against every key tile they see; dQ in registers."""
        seqlen = mask.seqlen
        s_thr = s_mma.get_slice(thread)
        dq_thr = dq_mma.get_slice(thread)
        tSrQ = s_thr.make_fragment_A(s_thr.partition_A(sQ))
        tSrdO = s_thr.make_fragment_A(s_thr.partition_A(sdO))
        tSrK = s_thr.make_fragment_B(s_thr.partition_B(sKV))
        # The same K tile as the (head dim, keys) B operand of dQ += dS K.
        sKt = cute.make_tensor(sKV.iterator, cute.select(sKV.layout, mode=[1, 0, 2]))
        tQrKt = dq_thr.make_fragment_B(dq_thr.partition_B(sKt))
        acc_dq = dq_thr.make_fragment_C(
            dq_thr.partition_shape_C((self.tiles.rows_per_warpgroup, self.tiles.head_dim))
        )
        acc_dq.fill(0.0)
        dq_mma.set(warpgroup.Field.ACCUMULATE, True)
        acc_s_shape = s_thr.partition_shape_C((self.tiles.rows_per_warpgroup, self.tiles.tile_n))

        row_base = tile.m_tile * self.tiles.tile_m + wg * self.tiles.rows_per_warpgroup
        bounds = RowKeyBounds.allocate(
            rows_cols(
                s_thr.partition_C(
                    cute.make_identity_tensor((self.tiles.rows_per_warpgroup, self.tiles.tile_n))
                )
            )
        )
        rows = cute.size(bounds.coords, mode=[0])
        lse_log2 = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        delta = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        # One loop for the bounds and the statistics: splitting it reorders the loads (and the SASS).
        for r in cutlass.range_constexpr(rows):
            row = bounds.row(row_base, r)
            lo, hi = mask.key_bounds(row)
            bounds.set(r, (lo, hi))
            # Rows past the sequence (or seeing no key) contribute nothing: P = 0 for them.
            lse_log2[r] = cutlass.Float32.inf
            delta[r] = 0.0
            if row < seqlen.seqlen_q and hi > lo:
                lse_log2[r] = mLSE[seqlen.q_start + row, tile.head] * LOG2_E
                delta[r] = mDelta[seqlen.q_start + row, tile.head]
        scale_log2 = softmax_scale * LOG2_E

        q_pipe.consumer_wait(loaded_once(self.tiles.consumer_warpgroups, wg))
        tSrQ_wg = tSrQ[None, None, None, wg]
        tSrdO_wg = tSrdO[None, None, None, wg]
        ds_operand = cute.make_rmem_tensor(
            accumulator_as_operand_a(s_thr.make_fragment_C(acc_s_shape).layout), self.dtype
        )
        rows_state = DqRows(bounds=bounds, lse_log2=lse_log2, delta=delta, scale_log2=scale_log2)
        operands = DqOperands(
            dq_mma=dq_mma, tSrQ=tSrQ_wg, tSrdO=tSrdO_wg, tSrK=tSrK, tQrKt=tQrKt, acc_dq=acc_dq,
            ds_operand=ds_operand, acc_s_shape=acc_s_shape,
        )  # fmt: skip
        # Three runs of key tiles: masked leading, fully visible, masked trailing.
        for n in cutlass.range(runs.begin, runs.full_begin, unroll=1):
            s_mma, kv_consumer, order = self.dq_tile(True, n, s_mma, operands, kv_consumer, order, rows_state)
        for n in cutlass.range(runs.full_begin, runs.full_end, unroll=1):
            s_mma, kv_consumer, order = self.dq_tile(
                False, n, s_mma, operands, kv_consumer, order, rows_state
            )
        for n in cutlass.range(runs.full_end, runs.end, unroll=1):
            s_mma, kv_consumer, order = self.dq_tile(True, n, s_mma, operands, kv_consumer, order, rows_state)

        # dQ = scale * sum_n dS K; staged in this warpgroup's Q buffer and stored row by row.
        for i in cutlass.range_constexpr(cute.size(acc_dq)):
            acc_dq[i] = acc_dq[i] * softmax_scale
        out = cute.make_rmem_tensor(acc_dq.layout, self.dtype)
        out.store(acc_dq.load().to(self.dtype))
        store_rows(
            dq_thr,
            out,
            sQ[None, None, wg],
            mdQ,
            (self.tiles.rows_per_warpgroup, self.tiles.head_dim),
            wg,
            thread,
            seqlen.q_start,
            row_base,
            tile.head,
            seqlen.seqlen_q,
        )

    @cute.jit
    def dq_tile(
        self,
        masked: cutlass.Constexpr,
        n: cutlass.Int32,
        s_mma: cute.TiledMma,
        operands: DqOperands,
        kv_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        rows_state: DqRows,
    ):
        """S = Q K^T and dP = dO V^T, then dS = P (dP - delta), then dQ += dS K."""
        dq_mma, tSrQ, tSrdO, tSrK = operands.dq_mma, operands.tSrQ, operands.tSrdO, operands.tSrK
        tQrKt, acc_dq, ds_operand, acc_s_shape = (
            operands.tQrKt,
            operands.acc_dq,
            operands.ds_operand,
            operands.acc_s_shape,
        )
        bounds, lse_log2, delta, scale_log2 = (
            rows_state.bounds,
            rows_state.lse_log2,
            rows_state.delta,
            rows_state.scale_log2,
        )
        acc_s = cute.make_rmem_tensor(acc_s_shape, cutlass.Float32)
        acc_dp = cute.make_rmem_tensor(acc_s_shape, cutlass.Float32)
        k_handle = kv_consumer.wait_and_advance()
        v_handle = kv_consumer.wait_and_advance()
        order.wait()
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(tSrQ, mode=[2])):
            s_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(s_mma, acc_s, tSrQ[None, None, k], tSrK[None, None, k, k_handle.index], acc_s)
        for k in cutlass.range_constexpr(cute.size(tSrdO, mode=[2])):
            s_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(s_mma, acc_dp, tSrdO[None, None, k], tSrK[None, None, k, v_handle.index], acc_dp)
        warpgroup.commit_group()
        order.arrive()
        warpgroup.wait_group(0)
        v_handle.release()

        s = rows_cols(acc_s)
        dp = rows_cols(acc_dp)
        key_first = n * self.tiles.tile_n
        for r in cutlass.range_constexpr(cute.size(s, mode=[0])):
            shift = lse_log2[r]
            lo, hi = bounds.window(r, key_first)
            for c in cutlass.range_constexpr(cute.size(s, mode=[1])):
                p = cute.math.exp2(s[r, c] * scale_log2 - shift, fastmath=True)
                if cutlass.const_expr(masked):
                    col = bounds.column(c)
                    if col < lo or col >= hi:
                        p = cutlass.Float32(0.0)
                s[r, c] = p * (dp[r, c] - delta[r])
        as_accumulator(ds_operand, acc_s).store(acc_s.load().to(self.dtype))

        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(ds_operand, mode=[2])):
            cute.gemm(dq_mma, acc_dq, ds_operand[None, None, k], tQrKt[None, None, k, k_handle.index], acc_dq)
        warpgroup.commit_group()
        warpgroup.wait_group(0)
        k_handle.release()
        return s_mma, kv_consumer, order
