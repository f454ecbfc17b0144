"""dQ, dK and dV of chunk-causal attention in one Hopper (sm_90a) kernel, in the CuTe DSL.

The dK/dV kernel's tiling (``backward_dkdv_sm90``): a CTA owns 128 keys of one (sequence, KV
head), two consumer warpgroups of 64 keys, and streams the 64-row Q/dO tiles that can see those
keys. Per query tile it also writes its half of dS to shared memory and, once both halves are
there, each warpgroup computes a (64 rows x D/2) slice of dQ = dS K over all 128 keys. It stages
that slice in shared memory, and a warp of the producer warpgroup adds it to a float32 dQ buffer
in global memory with a TMA reduce-add, which the L2 applies atomically: five GEMMs per tile pair
instead of the two-kernel path's seven, at the price of a float32 dQ buffer and an order of
additions that varies from run to run (``backward.py`` keeps the two-kernel path for the
deterministic mode).

dS is scaled by the softmax scale before it is rounded, so dK and dQ need no scaling afterwards.
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

from s2s.attention.cute.backward_dkdv_sm90 import QUERY_TILE, ChunkAttentionBackwardDkDvSm90
from s2s.attention.cute.forward_sm90 import (
    LOG2_E,
    _accumulator_as_operand_a,
    _as_acc,
    _rows_cols,
    rows_view,
    stats_view,
    table_view,
)

DS_BUFFERS = 2  # dS of tile m+1 is written while the other warpgroup may still read tile m's
# Named barrier ids (0 is the CTA-wide one, 1..3 the per-warpgroup ones).
BOTH_WARPGROUPS_BARRIER = 4
DQ_FULL_BARRIER = 5  # + warpgroup: its dQ slice is staged (128 consumer threads + the dQ warp)
DQ_EMPTY_BARRIER = 7  # + warpgroup: the staging buffer may be rewritten
DQ_HANDSHAKE_THREADS = 128 + 32


class ChunkAttentionBackwardSm90(ChunkAttentionBackwardDkDvSm90):
    """The fused backward: keys stay, query tiles stream; five GEMMs per query tile."""

    @cute.jit
    def __call__(
        self,
        q: cute.Pointer,  # (total_q, Hq, D)
        k: cute.Pointer,  # (total_k, Hk, D)
        v: cute.Pointer,  # (total_k, Hk, D)
        do: cute.Pointer,  # (total_q, Hq, D)
        lse: cute.Pointer,  # (Hq, total_q) fp32
        delta: cute.Pointer,  # (Hq, total_q) fp32
        dq_accum: cute.Pointer,  # (total_q, Hq, D) fp32, zeroed: dQ is added into it
        dk: cute.Pointer,  # (total_k, Hk, D) out
        dv: cute.Pointer,  # (total_k, Hk, D) out
        seq: cute.Pointer,  # (B, 8) int32
        total_q: cutlass.Int32,
        total_k: cutlass.Int32,
        heads_q: cutlass.Int32,
        heads_k: cutlass.Int32,
        batch: cutlass.Int32,
        k_tiles: cutlass.Int32,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        stream: cuda.CUstream,
    ):
        d = self.head_dim
        dq_cols = d // self.num_wg  # each warpgroup owns a slice of dQ's head dim
        mQ, mdO, mdQ = (rows_view(p, total_q, heads_q, d) for p in (q, do, dq_accum))
        mK, mV, mdK, mdV = (rows_view(p, total_k, heads_k, d) for p in (k, v, dk, dv))
        mLSE, mDelta = stats_view(lse, total_q, heads_q), stats_view(delta, total_q, heads_q)
        seq_info = table_view(seq, batch)
        self.dtype = mQ.element_type

        st_shape = (self.rows_wg, QUERY_TILE, d)  # S^T and dP^T: (keys, queries), K = head dim
        grad_shape = (self.rows_wg, d, QUERY_TILE)  # dK and dV: (keys, head dim), K = queries
        dq_shape = (QUERY_TILE, dq_cols, self.tile_m)  # dQ slice: (queries, head dim), K = keys
        k_major = cute.nvgpu.OperandMajorMode.K
        mn_major = cute.nvgpu.OperandMajorMode.MN
        st_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, k_major, k_major, cutlass.Float32, (1, 1, 1), st_shape[:2]
        )
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
        # dQ = dS K: dS from shared memory with queries contiguous, K through its transposed view.
        dq_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, mn_major, mn_major, cutlass.Float32, (1, 1, 1), dq_shape[:2]
        )
        sK_layout = sm90_utils.make_smem_layout_a(
            LayoutEnum.from_tensor(mK), st_shape, self.dtype, self.num_wg
        )
        sQ_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mQ), st_shape, self.dtype, self.kv_stages
        )
        sdS_layout = sm90_utils.make_smem_layout_a(LayoutEnum.COL_MAJOR, dq_shape, self.dtype, DS_BUFFERS)
        sdQ_layout = sm90_utils.make_smem_layout_epi(
            cutlass.Float32, LayoutEnum.ROW_MAJOR, dq_shape[:2], self.num_wg
        )
        load = cpasync.CopyBulkTensorTileG2SOp()
        k_smem = cute.slice_(sK_layout, (None, None, 0))
        q_smem = cute.slice_(sQ_layout, (None, None, 0))
        tma_k, tma_mK = cpasync.make_tiled_tma_atom(load, mK, k_smem, (self.rows_wg, d))
        tma_v, tma_mV = cpasync.make_tiled_tma_atom(load, mV, k_smem, (self.rows_wg, d))
        tma_q, tma_mQ = cpasync.make_tiled_tma_atom(load, mQ, q_smem, (QUERY_TILE, d))
        tma_do, tma_mdO = cpasync.make_tiled_tma_atom(load, mdO, q_smem, (QUERY_TILE, d))
        tma_dq, tma_mdQ = cpasync.make_tiled_tma_atom(
            cpasync.CopyReduceBulkTensorTileS2GOp(),
            mdQ,
            cute.slice_(sdQ_layout, (None, None, 0)),
            dq_shape[:2],
        )
        self.kv_bytes = 2 * cute.size_in_bytes(self.dtype, k_smem)  # K and V share a stage
        self.q_bytes = 2 * cute.size_in_bytes(self.dtype, q_smem)  # Q and dO share a stage

        @cute.struct
        class SharedStorage:
            kv_barriers: cute.struct.MemRange[cutlass.Int64, self.num_wg * 2]
            q_barriers: cute.struct.MemRange[cutlass.Int64, self.kv_stages * 2]
            order_barriers: cute.struct.MemRange[cutlass.Int64, self.num_wg]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sdO: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sdS: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sdS_layout)], 1024]
            sdQ: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, cute.cosize(sdQ_layout)], 1024]
            stats: cute.struct.MemRange[cutlass.Float32, cute.cosize(self.statistics_layout())]

        self.shared_storage = SharedStorage
        self.fused_kernel(
            (st_mma, grad_mma, dq_mma),
            (tma_k, tma_mK, tma_v, tma_mV, tma_q, tma_mQ, tma_do, tma_mdO),
            tma_dq,
            tma_mdQ,
            mdK,
            mdV,
            mLSE,
            mDelta,
            seq_info,
            left_chunks,
            softmax_scale,
            (sK_layout, sQ_layout, sdS_layout, sdQ_layout),
        ).launch(
            grid=[k_tiles, heads_k, batch],
            block=[self.tiles.threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=1,
        )

    @cute.kernel
    def fused_kernel(
        self,
        mmas: tuple,
        loads: tuple,
        tma_dq: cute.CopyAtom,
        mdQ: cute.Tensor,
        mdK: cute.Tensor,
        mdV: cute.Tensor,
        mLSE: cute.Tensor,
        mDelta: cute.Tensor,
        seq_info: cute.Tensor,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        layouts: tuple,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        n_tile, head_k, seq = cute.arch.block_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = cute.arch.make_warp_uniform(tidx // 128)
        tma_k, mK, tma_v, mV, tma_q, mQ, tma_do, mdO = loads
        sK_layout, sQ_layout, sdS_layout, sdQ_layout = layouts
        group = mQ.shape[2] // mK.shape[2]

        smem = SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        kv_pipe = self.tma_pipeline(storage.kv_barriers.data_ptr(), self.num_wg, 4, self.kv_bytes)
        q_pipe = self.tma_pipeline(
            storage.q_barriers.data_ptr(), self.kv_stages, 4 * self.num_wg, self.q_bytes
        )
        kv_producer, _ = kv_pipe.make_participants()
        q_producer, q_consumer = q_pipe.make_participants()
        order = self.warpgroup_order(storage.order_barriers.data_ptr(), wg)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sdO = storage.sdO.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sdS = storage.sdS.get_tensor(sdS_layout.outer, swizzle=sdS_layout.inner)
        sdQ = storage.sdQ.get_tensor(sdQ_layout.outer, swizzle=sdQ_layout.inner)
        stats = storage.stats.get_tensor(self.statistics_layout())

        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        sequence = self.read_sequence(seq_info, seq)
        q_start, k_start, _, seqlen_k = sequence[:4]
        key_first = n_tile * self.tile_m

        if key_first < seqlen_k:
            m_begin, m_end = self.query_tile_run(key_first, sequence, left_chunks)
            if wg == 0:
                cute.arch.setmaxregister_decrease(self.producer_registers)
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
                        sK,
                        sV,
                        sQ,
                        sdO,
                        kv_producer,
                        q_producer,
                        q_start,
                        k_start,
                        n_tile,
                        head_k,
                        group,
                        m_begin,
                        m_end,
                    )
                if warp == 1:
                    self.store_dq(tma_dq, mdQ, sdQ, q_start, head_k, group, m_begin, m_end)
            else:
                cute.arch.setmaxregister_increase(self.consumer_registers)
                self.consume_fused(
                    mmas,
                    (sK, sV, sQ, sdO, sdS, sdQ, stats),
                    mdK,
                    mdV,
                    mLSE,
                    mDelta,
                    kv_pipe,
                    q_consumer,
                    order,
                    wg - 1,
                    tidx % 128,
                    n_tile,
                    head_k,
                    group,
                    sequence,
                    left_chunks,
                    softmax_scale,
                    m_begin,
                    m_end,
                )

    @cute.jit
    def consume_fused(
        self,
        mmas: tuple,
        smem: tuple,
        mdK: cute.Tensor,
        mdV: cute.Tensor,
        mLSE: cute.Tensor,
        mDelta: cute.Tensor,
        kv_pipe: pipeline.PipelineTmaAsync,
        q_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        wg: cutlass.Int32,
        thread: cutlass.Int32,
        n_tile: cutlass.Int32,
        head_k: cutlass.Int32,
        group: cutlass.Int32,
        sequence: tuple,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        m_begin: cutlass.Int32,
        m_end: cutlass.Int32,
    ):
        """One warpgroup: 64 keys against every query tile that sees them (dK, dV in registers),
        and its head-dim slice of each tile's dQ, reduced into global memory."""
        st_mma, grad_mma, dq_mma = mmas
        sK, sV, sQ, sdO, sdS, sdQ, stats = smem
        k_start, seqlen_q, seqlen_k = sequence[1:4]
        d = self.head_dim
        dq_cols = d // self.num_wg
        st_thr = st_mma.get_slice(thread)
        grad_thr = grad_mma.get_slice(thread)
        dq_thr = dq_mma.get_slice(thread)
        tSrK = st_thr.make_fragment_A(st_thr.partition_A(sK))
        tSrV = st_thr.make_fragment_A(st_thr.partition_A(sV))
        tSrQ = st_thr.make_fragment_B(st_thr.partition_B(sQ))
        tSrdO = st_thr.make_fragment_B(st_thr.partition_B(sdO))
        sQt = cute.make_tensor(sQ.iterator, cute.select(sQ.layout, mode=[1, 0, 2]))
        sdOt = cute.make_tensor(sdO.iterator, cute.select(sdO.layout, mode=[1, 0, 2]))
        tGrQt = grad_thr.make_fragment_B(grad_thr.partition_B(sQt))
        tGrdOt = grad_thr.make_fragment_B(grad_thr.partition_B(sdOt))
        grad_shape = grad_thr.partition_shape_C((self.rows_wg, d))
        acc_dk = grad_thr.make_fragment_C(grad_shape)
        acc_dv = grad_thr.make_fragment_C(grad_shape)
        acc_dk.fill(0.0)
        acc_dv.fill(0.0)
        grad_mma.set(warpgroup.Field.ACCUMULATE, True)
        acc_st_shape = st_thr.partition_shape_C((self.rows_wg, QUERY_TILE))
        p_operand = cute.make_rmem_tensor(
            _accumulator_as_operand_a(st_thr.make_fragment_C(acc_st_shape).layout), self.dtype
        )
        ds_operand = cute.make_rmem_tensor(
            _accumulator_as_operand_a(st_thr.make_fragment_C(acc_st_shape).layout), self.dtype
        )
        tScS = _rows_cols(st_thr.partition_C(cute.make_identity_tensor((self.rows_wg, QUERY_TILE))))

        # dS^T of this warpgroup's keys into its half of each dS buffer, seen as (keys, queries).
        sdSt = cute.make_tensor(sdS.iterator, cute.select(sdS.layout, mode=[1, 0, 2]))
        tSsdS = st_thr.partition_C(cute.local_tile(sdSt, (self.rows_wg, QUERY_TILE, DS_BUFFERS), (wg, 0, 0)))
        # dQ slice = dS (all 128 keys) x K^T slice; K's two 64-key stages are two K-halves.
        tDrdS = dq_thr.make_fragment_A(dq_thr.partition_A(sdS))
        sKt = cute.make_tensor(sK.iterator, cute.select(sK.layout, mode=[1, 0, 2]))
        tDrKt = dq_thr.make_fragment_B(
            dq_thr.partition_B(cute.local_tile(sKt, (dq_cols, self.rows_wg, self.num_wg), (wg, 0, 0)))
        )
        acc_dq = dq_thr.make_fragment_C(dq_thr.partition_shape_C((QUERY_TILE, dq_cols)))
        dq_mma.set(warpgroup.Field.ACCUMULATE, True)  # acc_dq is zeroed per tile instead
        tDsdQ = dq_thr.partition_C(sdQ[None, None, wg])

        key_base = n_tile * self.tile_m + wg * self.rows_wg
        scale_log2 = softmax_scale * LOG2_E
        kv_pipe.consumer_wait(pipeline.PipelineState(self.num_wg, wg, wg, cutlass.Int32(0)))
        tSrK_wg = tSrK[None, None, None, wg]
        tSrV_wg = tSrV[None, None, None, wg]
        key_first = n_tile * self.tile_m
        # Keys past the sequence end must get P = 0 here: their dS would reach dQ.
        key_last = key_first + self.tile_m - 1

        operands = (grad_mma, tSrK_wg, tSrV_wg, tSrQ, tSrdO, tGrQt, tGrdOt, acc_dk, acc_dv)
        operands = (*operands, p_operand, ds_operand, acc_st_shape)
        dq_operands = (dq_mma, tSsdS, tDrdS, tDrKt, acc_dq, tDsdQ)
        keys = (tScS, key_base, mLSE, mDelta, stats[None, None, wg], scale_log2, softmax_scale)
        tile = cutlass.Int32(0)
        for h in cutlass.range(group, unroll=1):
            head = head_k * group + h
            for m in cutlass.range(m_begin, m_end, unroll=1):
                row_first = m * QUERY_TILE
                row_last = cutlass.min(row_first + QUERY_TILE, seqlen_q) - 1
                lo_last, _ = self.key_bounds(row_last, sequence, left_chunks)
                _, hi_first = self.key_bounds(row_first, sequence, left_chunks)
                full = lo_last <= key_first and hi_first > key_last
                query = (m, head, sequence, left_chunks, tile % DS_BUFFERS, wg, thread)
                if full:
                    st_mma, q_consumer, order = self.fused_tile(
                        False, st_mma, operands, dq_operands, q_consumer, order, keys, query
                    )
                else:
                    st_mma, q_consumer, order = self.fused_tile(
                        True, st_mma, operands, dq_operands, q_consumer, order, keys, query
                    )
                tile += 1

        out_dk = cute.make_rmem_tensor(acc_dk.layout, self.dtype)
        out_dk.store(acc_dk.load().to(self.dtype))
        out_dv = cute.make_rmem_tensor(acc_dv.layout, self.dtype)
        out_dv.store(acc_dv.load().to(self.dtype))
        # The other warpgroup's last dQ GEMM reads this warpgroup's K: wait before staging dK in it.
        cute.arch.barrier(barrier_id=BOTH_WARPGROUPS_BARRIER, number_of_threads=256)
        self.store_rows(
            grad_thr, out_dk, sK[None, None, wg], mdK, wg, thread, k_start, key_base, head_k, seqlen_k
        )
        self.store_rows(
            grad_thr, out_dv, sV[None, None, wg], mdV, wg, thread, k_start, key_base, head_k, seqlen_k
        )

    @cute.jit
    def fused_tile(
        self,
        masked: cutlass.Constexpr,
        st_mma: cute.TiledMma,
        operands: tuple,
        dq_operands: tuple,
        q_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        keys: tuple,
        query: tuple,
    ):
        """S^T, dP^T; P^T and scaled dS^T; dS^T to shared memory; dV += P^T dO, dK += dS^T Q and
        the dQ slice; then the dQ slice added to global memory."""
        (
            grad_mma,
            tSrK,
            tSrV,
            tSrQ,
            tSrdO,
            tGrQt,
            tGrdOt,
            acc_dk,
            acc_dv,
            p_operand,
            ds_operand,
            acc_st_shape,
        ) = operands
        dq_mma, tSsdS, tDrdS, tDrKt, acc_dq, tDsdQ = dq_operands
        m, head, sequence, left_chunks, buffer, wg, thread = query
        acc_st = cute.make_rmem_tensor(acc_st_shape, cutlass.Float32)
        acc_dpt = cute.make_rmem_tensor(acc_st_shape, cutlass.Float32)
        handle = q_consumer.wait_and_advance()
        order.wait()
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(tSrK, mode=[2])):
            st_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(st_mma, acc_st, tSrK[None, None, k], tSrQ[None, None, k, handle.index], acc_st)
        for k in cutlass.range_constexpr(cute.size(tSrV, mode=[2])):
            st_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(st_mma, acc_dpt, tSrV[None, None, k], tSrdO[None, None, k, handle.index], acc_dpt)
        warpgroup.commit_group()
        order.arrive()
        stat = self.load_statistic(keys, m * QUERY_TILE, sequence, head, thread)
        warpgroup.wait_group(0)
        rows = (m * QUERY_TILE, sequence, left_chunks, wg, thread)
        self.probabilities_and_ds(masked, acc_st, acc_dpt, keys, stat, rows)
        _as_acc(p_operand, acc_st).store(acc_st.load().to(self.dtype))
        ds_acc = _as_acc(ds_operand, acc_dpt)
        ds_acc.store(acc_dpt.load().to(self.dtype))
        acc_dq.fill(0.0)

        # dV and dK need only this warpgroup's registers: they run while dS goes to shared
        # memory and the other warpgroup catches up at the barrier.
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(p_operand, mode=[2])):
            cute.gemm(grad_mma, acc_dv, p_operand[None, None, k], tGrdOt[None, None, k, handle.index], acc_dv)
        for k in cutlass.range_constexpr(cute.size(ds_operand, mode=[2])):
            cute.gemm(grad_mma, acc_dk, ds_operand[None, None, k], tGrQt[None, None, k, handle.index], acc_dk)
        warpgroup.commit_group()
        cute.autovec_copy(ds_acc, tSsdS[None, None, None, buffer])
        cute.arch.fence_view_async_shared()
        cute.arch.barrier(barrier_id=BOTH_WARPGROUPS_BARRIER, number_of_threads=256)

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
        warpgroup.wait_group(0)
        handle.release()

        # Stage the dQ slice for the dQ warp, once it has sent the previous one off.
        cute.arch.barrier(barrier_id=DQ_EMPTY_BARRIER + wg, number_of_threads=DQ_HANDSHAKE_THREADS)
        cute.autovec_copy(acc_dq, tDsdQ)
        cute.arch.fence_view_async_shared()
        cute.arch.barrier_arrive(barrier_id=DQ_FULL_BARRIER + wg, number_of_threads=DQ_HANDSHAKE_THREADS)
        return st_mma, q_consumer, order

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
        for w in cutlass.range_constexpr(self.num_wg):
            if tiles > 0:
                cute.arch.barrier_arrive(
                    barrier_id=DQ_EMPTY_BARRIER + w, number_of_threads=DQ_HANDSHAKE_THREADS
                )
        tile = cutlass.Int32(0)
        for h in cutlass.range(group, unroll=1):
            head = head_k * group + h
            for m in cutlass.range(m_begin, m_end, unroll=1):
                rows = cute.domain_offset((q_start + m * QUERY_TILE, 0), mdQ[None, None, head])
                gdQ = cute.local_tile(rows, (QUERY_TILE, self.head_dim // self.num_wg), (0, None))
                tRsR, tRgR = cpasync.tma_partition(
                    tma_dq, 0, cute.make_layout(1), cute.group_modes(sdQ, 0, 2), cute.group_modes(gdQ, 0, 2)
                )
                tile += 1
                for w in cutlass.range_constexpr(self.num_wg):
                    cute.arch.barrier(barrier_id=DQ_FULL_BARRIER + w, number_of_threads=DQ_HANDSHAKE_THREADS)
                    cute.copy(tma_dq, tRsR[None, w], tRgR[None, w])
                    cute.arch.cp_async_bulk_commit_group()
                    cute.arch.cp_async_bulk_wait_group(0, read=True)
                    if tile < tiles:  # the consumers stage exactly ``tiles`` slices
                        cute.arch.barrier_arrive(
                            barrier_id=DQ_EMPTY_BARRIER + w, number_of_threads=DQ_HANDSHAKE_THREADS
                        )
        cute.arch.cp_async_bulk_wait_group(0, read=True)
