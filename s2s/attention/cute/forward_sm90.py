"""Chunk-causal attention forward for Hopper (sm_90a), written in the CuTe DSL.

One CTA computes ``tile_m`` query rows of one (sequence, query head): a producer warp streams Q once
and K/V tiles through a multi-stage shared-memory ring with TMA; one, two or three consumer
warpgroups (64 rows each) run QK^T and PV on the tensor cores (WGMMA) with an fp32 online softmax in
registers. Two or three warpgroups take turns issuing their GEMMs (ping-pong); a CTA of one
warpgroup has a second CTA resident on its SM instead, whose GEMMs fill its start and epilogue
(short sequences, where a CTA walks few key tiles). Within a warpgroup the QK^T of one key tile is
issued with the PV of the previous one, so softmax overlaps tensor work.

The chunk rule makes every query's visible keys one contiguous range whose ends never decrease
with the query (``s2s.attention.mask``). So a CTA loads only the key tiles its rows can see, and
splits them into three runs: masked leading tiles (the ``left_chunks`` edge), fully visible tiles
(no mask arithmetic at all) and masked trailing tiles (the chunk edge and the sequence end).
Chunk sizes, offsets and lengths are runtime values read per sequence, so a new chunk size or
length never recompiles.

Sequences are packed on one timeline (flash-attention's varlen layout); a padded batch is the
special case of equal lengths. Rows and keys beyond a sequence's end are masked or never stored;
the last key tile's V rows past the end (a cache's unused rows, the next sequence's) are zeroed in
shared memory before P @ V, so NaN there cannot reach the output as 0 x NaN.
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
from s2s.attention.cute.mask import ChunkMask, thread_row_bounds
from s2s.attention.cute.named_barrier import WARPGROUP_THREADS, sync_warpgroup
from s2s.attention.cute.pipeline import loaded_once, query_side_pipelines
from s2s.attention.cute.seqlen_info import SeqlenInfo
from s2s.attention.cute.softmax import OnlineSoftmax
from s2s.attention.cute.tile_operands import ForwardOperands, ForwardRows
from s2s.attention.cute.tile_scheduler import QueryTile
from s2s.attention.cute.tiles import PRODUCER_REGISTERS, ForwardTiles
from s2s.attention.cute.views import rows_view, stats_view, table_view


class ChunkAttentionForwardSm90:
    """The kernel object: ``cute.compile`` it once per (dtype, tile shape) and call it many times."""

    def __init__(self, tiles: ForwardTiles):
        self.tiles = tiles

    @cute.jit
    def __call__(
        self,
        q: cute.Pointer,  # (total_q, Hq, D) contiguous
        k: cute.Pointer,  # (total_k, Hk, D) contiguous
        v: cute.Pointer,  # (total_k, Hk, D) contiguous
        o: cute.Pointer,  # (total_q, Hq, D) contiguous
        lse: cute.Pointer,  # (Hq, total_q) fp32 contiguous
        seq: cute.Pointer,  # (B, 8) int32 contiguous: see the column names above
        total_q: cutlass.Int32,
        total_k: cutlass.Int32,
        heads_q: cutlass.Int32,
        heads_k: cutlass.Int32,
        batch: cutlass.Int32,
        grid_tiles: cutlass.Int32,  # query tiles of the longest sequence
        left_chunks: cutlass.Int32,  # -1: unlimited history
        softmax_scale: cutlass.Float32,
        stream: cuda.CUstream,
    ):
        """Launch on raw pointers and sizes: building the views here, not from DLPack on the host,
        keeps a call's host cost to a few microseconds (it matters for streaming steps)."""
        d = self.tiles.head_dim
        mQ = rows_view(q, total_q, heads_q, d)
        mO = rows_view(o, total_q, heads_q, d)
        mK = rows_view(k, total_k, heads_k, d)
        keys_first = rows_view(v, total_k, heads_k, d)
        mV = cute.make_tensor(
            keys_first.iterator, cute.select(keys_first.layout, mode=[1, 0, 2])
        )  # (D, keys, H)
        mLSE = stats_view(lse, total_q, heads_q)
        seq_info = table_view(seq, batch)
        self.dtype = mQ.element_type
        qk_shape = (self.tiles.rows_per_warpgroup, self.tiles.tile_n, self.tiles.head_dim)
        pv_shape = (self.tiles.rows_per_warpgroup, self.tiles.head_dim, self.tiles.tile_n)
        k_major = cute.nvgpu.OperandMajorMode.K
        v_major = LayoutEnum.from_tensor(mV).sm90_mma_major_mode()
        qk_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, k_major, k_major, cutlass.Float32, (1, 1, 1), qk_shape[:2]
        )
        pv_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            k_major,
            v_major,
            cutlass.Float32,
            (1, 1, 1),
            pv_shape[:2],
            warpgroup.OperandSource.RMEM,
        )
        sQ_layout = sm90_utils.make_smem_layout_a(
            LayoutEnum.from_tensor(mQ), qk_shape, self.dtype, self.tiles.consumer_warpgroups
        )
        sK_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mK), qk_shape, self.dtype, self.tiles.kv_stages
        )
        sV_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mV), pv_shape, self.dtype, self.tiles.kv_stages
        )
        load = cpasync.CopyBulkTensorTileG2SOp()
        tma_q, tma_mQ = cpasync.make_tiled_tma_atom(
            load,
            mQ,
            cute.slice_(sQ_layout, (None, None, 0)),
            (self.tiles.rows_per_warpgroup, self.tiles.head_dim),
        )
        tma_k, tma_mK = cpasync.make_tiled_tma_atom(
            load, mK, cute.slice_(sK_layout, (None, None, 0)), (self.tiles.tile_n, self.tiles.head_dim)
        )
        tma_v, tma_mV = cpasync.make_tiled_tma_atom(
            load, mV, cute.slice_(sV_layout, (None, None, 0)), (self.tiles.head_dim, self.tiles.tile_n)
        )
        self.q_bytes = cute.size_in_bytes(self.dtype, cute.slice_(sQ_layout, (None, None, 0)))
        self.kv_bytes = cute.size_in_bytes(self.dtype, cute.slice_(sK_layout, (None, None, 0)))
        kv_elements = max(cute.cosize(sK_layout), cute.cosize(sV_layout))

        @cute.struct
        class SharedStorage:
            q_barriers: cute.struct.MemRange[cutlass.Int64, self.tiles.consumer_warpgroups * 2]
            kv_barriers: cute.struct.MemRange[cutlass.Int64, self.tiles.kv_stages * 2]
            order_barriers: cute.struct.MemRange[cutlass.Int64, self.tiles.consumer_warpgroups]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sKV: cute.struct.Align[cute.struct.MemRange[self.dtype, kv_elements], 1024]

        self.shared_storage = SharedStorage
        self.kernel(
            qk_mma,
            pv_mma,
            tma_q,
            tma_mQ,
            tma_k,
            tma_mK,
            tma_v,
            tma_mV,
            mO,
            mLSE,
            seq_info,
            left_chunks,
            softmax_scale,
            sQ_layout,
            sK_layout,
            sV_layout,
        ).launch(
            grid=[grid_tiles, heads_q, batch],
            block=[self.tiles.threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=self.tiles.ctas_per_sm,
            # all 228 KB of an SM's shared memory, for every resident CTA (said here, the DSL
            # would otherwise ask the GPU, which a CPU-only build has not)
            preferred_smem_carveout=100 if self.tiles.ctas_per_sm > 1 else None,
        )

    @cute.kernel
    def kernel(
        self,
        qk_mma: cute.TiledMma,
        pv_mma: cute.TiledMma,
        tma_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_k: cute.CopyAtom,
        mK: cute.Tensor,
        tma_v: cute.CopyAtom,
        mV: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        seq_info: cute.Tensor,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
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
        sK = storage.sKV.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = cute.make_tensor(cute.recast_ptr(sK.iterator, sV_layout.inner), sV_layout.outer)

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
                    self.produce(
                        tma_q,
                        mQ,
                        tma_k,
                        mK,
                        tma_v,
                        mV,
                        sQ,
                        sK,
                        sV,
                        q_producer,
                        kv_producer,
                        seqlen,
                        tile,
                        runs,
                    )
            else:
                cute.arch.setmaxregister_increase(self.tiles.consumer_registers)
                self.consume(
                    qk_mma,
                    pv_mma,
                    sQ,
                    sK,
                    sV,
                    mO,
                    mLSE,
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
    def produce(
        self,
        tma_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_k: cute.CopyAtom,
        mK: cute.Tensor,
        tma_v: cute.CopyAtom,
        mV: cute.Tensor,
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        q_producer: pipeline.PipelineProducer,
        kv_producer: pipeline.PipelineProducer,
        seqlen: SeqlenInfo,
        tile: QueryTile,
        runs: KeyTileRuns,
    ):
        """One warp: Q of both warpgroups, then K and V tile by tile, in the consumers' order."""
        gQ = cute.local_tile(
            cute.domain_offset((seqlen.q_start, 0), mQ[None, None, tile.head]),
            (self.tiles.rows_per_warpgroup, self.tiles.head_dim),
            (None, 0),
        )
        gK = cute.local_tile(
            cute.domain_offset((seqlen.k_start, 0), mK[None, None, tile.head_k]),
            (self.tiles.tile_n, self.tiles.head_dim),
            (None, 0),
        )
        gV = cute.local_tile(
            cute.domain_offset((0, seqlen.k_start), mV[None, None, tile.head_k]),
            (self.tiles.head_dim, self.tiles.tile_n),
            (0, None),
        )
        tQsQ, tQgQ = cpasync.tma_partition(
            tma_q, 0, cute.make_layout(1), cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
        )
        tKsK, tKgK = cpasync.tma_partition(
            tma_k, 0, cute.make_layout(1), cute.group_modes(sK, 0, 2), cute.group_modes(gK, 0, 2)
        )
        tVsV, tVgV = cpasync.tma_partition(
            tma_v, 0, cute.make_layout(1), cute.group_modes(sV, 0, 2), cute.group_modes(gV, 0, 2)
        )
        for i in cutlass.range_constexpr(self.tiles.consumer_warpgroups):
            handle = q_producer.acquire_and_advance()
            cute.copy(
                tma_q,
                tQgQ[None, tile.m_tile * self.tiles.consumer_warpgroups + i],
                tQsQ[None, handle.index],
                tma_bar_ptr=handle.barrier,
            )
        for n in cutlass.range(runs.begin, runs.end, unroll=1):
            handle = kv_producer.acquire_and_advance()
            cute.copy(tma_k, tKgK[None, n], tKsK[None, handle.index], tma_bar_ptr=handle.barrier)
            handle = kv_producer.acquire_and_advance()
            cute.copy(tma_v, tVgV[None, n], tVsV[None, handle.index], tma_bar_ptr=handle.barrier)

    @cute.jit
    def consume(
        self,
        qk_mma: cute.TiledMma,
        pv_mma: cute.TiledMma,
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
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
        """One warpgroup: 64 query rows against every loaded key tile, then the epilogue."""
        qk_thr = qk_mma.get_slice(thread)
        pv_thr = pv_mma.get_slice(thread)
        tSrQ = qk_thr.make_fragment_A(qk_thr.partition_A(sQ))
        tSrK = qk_thr.make_fragment_B(qk_thr.partition_B(sK))
        tOrV = pv_thr.make_fragment_B(pv_thr.partition_B(sV))
        acc_o = pv_thr.make_fragment_C(
            pv_thr.partition_shape_C((self.tiles.rows_per_warpgroup, self.tiles.head_dim))
        )
        acc_o.fill(0.0)
        pv_mma.set(warpgroup.Field.ACCUMULATE, True)  # O accumulates from zero over every tile
        acc_s_shape = qk_thr.partition_shape_C((self.tiles.rows_per_warpgroup, self.tiles.tile_n))

        # Sequence-local row of each accumulator row this thread holds, and its visible keys.
        row_base = tile.m_tile * self.tiles.tile_m + wg * self.tiles.rows_per_warpgroup
        bounds = thread_row_bounds(qk_thr, (self.tiles.rows_per_warpgroup, self.tiles.tile_n), mask, row_base)
        softmax = OnlineSoftmax.create(cute.size(bounds.coords, mode=[0]), softmax_scale)

        # Q tile ``wg`` sits in stage ``wg`` of the Q ring, loaded once.
        q_pipe.consumer_wait(loaded_once(self.tiles.consumer_warpgroups, wg))
        tSrQ_wg = tSrQ[None, None, None, wg]
        # P of the previous key tile, in registers as the A operand of its PV GEMM.
        p_operand = cute.make_rmem_tensor(
            accumulator_as_operand_a(qk_thr.make_fragment_C(acc_s_shape).layout), self.dtype
        )

        operands = ForwardOperands(
            pv_mma=pv_mma, tSrQ=tSrQ_wg, tSrK=tSrK, tOrV=tOrV, acc_o=acc_o, p_operand=p_operand,
            acc_s_shape=acc_s_shape,
        )  # fmt: skip
        state = ForwardRows(softmax=softmax, bounds=bounds)
        if runs.begin < runs.end:
            # The first key tile (masked if it is not fully visible), then three runs of key
            # tiles: masked leading, fully visible, masked trailing. Each step after the first
            # overlaps this tile's softmax with the previous tile's PV GEMM.
            n_begin = runs.begin
            if n_begin < runs.full_begin or n_begin >= runs.full_end:
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    True, True, n_begin, qk_mma, operands, kv_consumer, order, state
                )
            else:
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    False, True, n_begin, qk_mma, operands, kv_consumer, order, state
                )
            for n in cutlass.range(n_begin + 1, runs.full_begin, unroll=1):
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    True, False, n, qk_mma, operands, kv_consumer, order, state
                )
            for n in cutlass.range(cutlass.max(runs.full_begin, n_begin + 1), runs.full_end, unroll=1):
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    False, False, n, qk_mma, operands, kv_consumer, order, state
                )
            for n in cutlass.range(cutlass.max(runs.full_end, n_begin + 1), runs.end, unroll=1):
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    True, False, n, qk_mma, operands, kv_consumer, order, state
                )
            # The last tile's PV. Its V rows past the sequence's keys (a cache's unused rows, the
            # next sequence's first rows) enter the GEMM with P = 0, and 0 x NaN is NaN: zero them
            # first. Only this tile can reach past seqlen_k (``KeyTileRuns.end``).
            v_handle = kv_consumer.wait_and_advance()
            past_end = mask.seqlen.seqlen_k - (runs.end - 1) * self.tiles.tile_n  # tile-local
            if past_end < self.tiles.tile_n:
                self.zero_keys_from(sV[None, None, v_handle.index], past_end, wg, thread)
            warpgroup.fence()
            for k in cutlass.range_constexpr(cute.size(p_operand, mode=[2])):
                cute.gemm(pv_mma, acc_o, p_operand[None, None, k], tOrV[None, None, k, v_handle.index], acc_o)
            warpgroup.commit_group()
            warpgroup.wait_group(0)
            v_handle.release()

        self.epilogue(
            pv_thr,
            acc_o,
            softmax,
            sQ[None, None, wg],
            mO,
            mLSE,
            wg,
            thread,
            tile,
            row_base,
            mask,
            softmax_scale,
        )

    @cute.jit
    def zero_keys_from(self, sV: cute.Tensor, first: cutlass.Int32, wg: cutlass.Int32, thread: cutlass.Int32):
        """Zero the keys (columns) ``first`` onward of one (D, tile_n) V stage, by the 128 threads of
        warpgroup ``wg`` in 16-byte stores along D (V is MN-major: D is contiguous in shared
        memory), then make the writes visible to the tensor cores (WGMMA reads shared memory
        through the async proxy) before any thread of the warpgroup issues its GEMM. Every consumer
        warpgroup zeroes the same stage of the last tile before its own PV GEMM; each writes the
        same zeros, and none reads that stage before."""
        d, n = self.tiles.head_dim, self.tiles.tile_n
        vector = 128 // self.dtype.width
        threads_d = d // vector  # a key's D values: threads_d threads, one 16-byte vector each
        store = cute.make_tiled_copy_tv(
            cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128),
            cute.make_ordered_layout((threads_d, WARPGROUP_THREADS // threads_d), order=(0, 1)),
            cute.make_layout((vector, 1)),
        )
        thr_store = store.get_slice(thread)
        dst = thr_store.partition_D(sV)
        coords = thr_store.partition_D(cute.make_identity_tensor((d, n)))
        zeros = cute.make_rmem_tensor_like(dst[None, None, 0])
        zeros.fill(0.0)
        for j in cutlass.range_constexpr(cute.size(dst, mode=[2])):
            if coords[0, 0, j][1] >= first:
                cute.copy(store, zeros, dst[None, None, j])
        cute.arch.fence_proxy("async.shared", space="cta")
        sync_warpgroup(wg)

    @cute.jit
    def overlapped_tile(
        self,
        masked: cutlass.Constexpr,
        first: cutlass.Constexpr,
        n: cutlass.Int32,
        qk_mma: cute.TiledMma,
        operands: ForwardOperands,
        kv_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        state: ForwardRows,
    ):
        """Issue S = Q K^T for tile n and O += P V for tile n - 1 together; while PV runs, do the
        softmax of tile n; then rescale O and keep P of tile n for the next step. The ``first``
        tile has no PV to overlap."""
        pv_mma, tSrQ, tSrK, tOrV = operands.pv_mma, operands.tSrQ, operands.tSrK, operands.tOrV
        acc_o, p_operand, acc_s_shape = operands.acc_o, operands.p_operand, operands.acc_s_shape
        softmax, bounds = state.softmax, state.bounds
        acc_s = cute.make_rmem_tensor(acc_s_shape, cutlass.Float32)
        if cutlass.const_expr(not first):
            v_handle = kv_consumer.wait_and_advance()  # V of tile n - 1 (the ring holds K, V, K, V, ...)
        k_handle = kv_consumer.wait_and_advance()  # K of tile n
        if cutlass.const_expr(self.tiles.ping_pong):
            order.wait()
        warpgroup.fence()
        for k in cutlass.range_constexpr(cute.size(tSrQ, mode=[2])):
            qk_mma.set(warpgroup.Field.ACCUMULATE, k != 0)
            cute.gemm(qk_mma, acc_s, tSrQ[None, None, k], tSrK[None, None, k, k_handle.index], acc_s)
        warpgroup.commit_group()
        if cutlass.const_expr(not first):
            for k in cutlass.range_constexpr(cute.size(p_operand, mode=[2])):
                cute.gemm(pv_mma, acc_o, p_operand[None, None, k], tOrV[None, None, k, v_handle.index], acc_o)
            warpgroup.commit_group()
        if cutlass.const_expr(self.tiles.ping_pong):
            order.arrive()
        if cutlass.const_expr(first):
            warpgroup.wait_group(0)
        else:
            warpgroup.wait_group(1)
        k_handle.release()
        softmax.update(masked, acc_s, bounds, n * self.tiles.tile_n)
        if cutlass.const_expr(not first):
            warpgroup.wait_group(0)
            v_handle.release()
            softmax.rescale(acc_o)
        as_accumulator(p_operand, acc_s).store(acc_s.load().to(self.dtype))
        return qk_mma, kv_consumer, order

    @cute.jit
    def epilogue(
        self,
        pv_thr: cute.ThrMma,
        acc_o: cute.Tensor,
        softmax: OnlineSoftmax,
        sO: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        wg: cutlass.Int32,
        thread: cutlass.Int32,
        tile: QueryTile,
        row_base: cutlass.Int32,
        mask: ChunkMask,
        softmax_scale: cutlass.Float32,
    ):
        """Normalize O, stage it in this warpgroup's Q buffer (free once the last QK^T is done) and
        store the rows inside the sequence with 16-byte copies; write the natural-log LSE
        (-inf where a row saw no key)."""
        seqlen = mask.seqlen
        o = rows_cols(acc_o)
        tOcO = rows_cols(
            pv_thr.partition_C(
                cute.make_identity_tensor((self.tiles.rows_per_warpgroup, self.tiles.head_dim))
            )
        )
        out = cute.make_rmem_tensor(acc_o.layout, self.dtype)
        out_rc = rows_cols(out)
        for r in cutlass.range_constexpr(cute.size(o, mode=[0])):
            inverse, lse = softmax.finalize(r, softmax_scale)
            for c in cutlass.range_constexpr(cute.size(o, mode=[1])):
                out_rc[r, c] = (o[r, c] * inverse).to(self.dtype)
            row = tOcO[r, 0][0]
            if row_base + row < seqlen.seqlen_q and tOcO[0, 0][1] == 0:
                mLSE[seqlen.q_start + row_base + row, tile.head] = lse
        store_rows(
            pv_thr,
            out,
            sO,
            mO,
            (self.tiles.rows_per_warpgroup, self.tiles.head_dim),
            wg,
            thread,
            seqlen.q_start,
            row_base,
            tile.head,
            seqlen.seqlen_q,
        )
