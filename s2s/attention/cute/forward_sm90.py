"""Chunk-causal attention forward for Hopper (sm_90a), written in the CuTe DSL.

One CTA computes ``tile_m`` query rows of one (sequence, query head): a producer warp streams Q once
and K/V tiles through a multi-stage shared-memory ring with TMA; two or three consumer warpgroups
(64 rows each) run QK^T and PV on the tensor cores (WGMMA) with an fp32 online softmax in
registers. The warpgroups take turns issuing their GEMMs (ping-pong), and within a warpgroup the
QK^T of one key tile is issued with the PV of the previous one, so softmax overlaps tensor work.

The chunk rule makes every query's visible keys one contiguous range whose ends never decrease
with the query (``s2s.attention.mask``). So a CTA loads only the key tiles its rows can see, and
splits them into three runs: masked leading tiles (the ``left_chunks`` edge), fully visible tiles
(no mask arithmetic at all) and masked trailing tiles (the chunk edge and the sequence end).
Chunk sizes, offsets and lengths are runtime values read per sequence, so a new chunk size or
length never recompiles.

Sequences are packed on one timeline (flash-attention's varlen layout); a padded batch is the
special case of equal lengths. Rows and keys beyond a sequence's end are masked or never stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.memory import SmemAllocator
from cutlass.tensor_utils import LayoutEnum

LOG2_E = math.log2(math.e)

# Columns of the per-sequence table ``seq_info`` (int32, one row per sequence).
Q_START, K_START, SEQLEN_Q, SEQLEN_K, CHUNK_Q, CHUNK_K, Q_OFFSET, K_OFFSET = range(8)
SEQ_INFO_COLUMNS = 8


@dataclass(frozen=True)
class ForwardTiles:
    """Compile-time shape of the kernel: what one specialization fixes."""

    head_dim: int
    tile_n: int = 128  # keys per K/V tile
    rows_per_warpgroup: int = 64
    consumer_warpgroups: int = 2
    kv_stages: int = 4

    @property
    def tile_m(self) -> int:
        return self.rows_per_warpgroup * self.consumer_warpgroups

    @property
    def threads(self) -> int:
        return 128 * (self.consumer_warpgroups + 1)

    @property
    def consumer_registers(self) -> int:
        """Per-thread registers of a consumer: the 64K-register file shared with the producer."""
        return {2: 240, 3: 160}[self.consumer_warpgroups]


def rows_view(pointer: cute.Pointer, rows, heads, head_dim: int) -> cute.Tensor:
    """A contiguous (rows, heads, head_dim) tensor seen as (rows, head_dim, heads). The row stride
    is declared a multiple of the head dim, so every row starts on a 16-byte boundary."""
    row = cute.assume(heads * head_dim, divby=head_dim)
    return cute.make_tensor(pointer, cute.make_layout((rows, head_dim, heads), stride=(row, 1, head_dim)))


def stats_view(pointer: cute.Pointer, rows, heads) -> cute.Tensor:
    """A contiguous (heads, rows) fp32 tensor (LSE, delta) seen as (rows, heads)."""
    return cute.make_tensor(pointer, cute.make_layout((rows, heads), stride=(1, rows)))


def table_view(pointer: cute.Pointer, batch) -> cute.Tensor:
    """The (batch, 8) int32 per-sequence table."""
    columns = SEQ_INFO_COLUMNS
    return cute.make_tensor(pointer, cute.make_layout((batch, columns), stride=(columns, 1)))


def _rows_cols(t: cute.Tensor) -> cute.Tensor:
    """View a WGMMA accumulator ((2, 2, V), M, N) per thread as (rows, cols) = ((2, M), (2, V, N))."""
    s, d = t.layout.shape, t.layout.stride
    layout = cute.make_layout(
        ((s[0][1], s[1]), (s[0][0], s[0][2], s[2])),
        stride=((d[0][1], d[1]), (d[0][0], d[0][2], d[2])),
    )
    return cute.make_tensor(t.iterator, layout)


def _as_acc(operand: cute.Tensor, acc: cute.Tensor) -> cute.Tensor:
    """The registers of a P operand seen in the accumulator's layout, to store converted S into."""
    return cute.make_tensor(operand.iterator, acc.layout)


def _accumulator_as_operand_a(acc_layout: cute.Layout) -> cute.Layout:
    """The same registers seen as a 16-bit WGMMA A operand: ((2, 2, V), M, N) -> ((2, 2, 2), M, (V/2, N)).

    For 16-bit inputs an fp32 accumulator of QK^T and the register A operand of PV place each
    value in the same thread, so P needs a conversion but no shuffle.
    """
    s, d = acc_layout.shape, acc_layout.stride
    return cute.make_layout(
        ((s[0][0], s[0][1], 2), s[1], (s[0][2] // 2, s[2])),
        stride=((d[0][0], d[0][1], d[0][2]), d[1], (d[0][2] * 2, d[2])),
    )


class ChunkAttentionForwardSm90:
    """The kernel object: ``cute.compile`` it once per (dtype, tile shape) and call it many times."""

    def __init__(self, tiles: ForwardTiles):
        self.tiles = tiles
        self.tile_m = tiles.tile_m
        self.tile_n = tiles.tile_n
        self.rows_wg = tiles.rows_per_warpgroup
        self.num_wg = tiles.consumer_warpgroups
        self.head_dim = tiles.head_dim
        self.kv_stages = tiles.kv_stages
        self.producer_registers = 24
        self.consumer_registers = tiles.consumer_registers

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
        q_tiles: cutlass.Int32,  # query tiles of the longest sequence
        left_chunks: cutlass.Int32,  # -1: unlimited history
        softmax_scale: cutlass.Float32,
        stream: cuda.CUstream,
    ):
        """Launch on raw pointers and sizes: building the views here, not from DLPack on the host,
        keeps a call's host cost to a few microseconds (it matters for streaming steps)."""
        d = self.head_dim
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
        qk_shape = (self.rows_wg, self.tile_n, self.head_dim)
        pv_shape = (self.rows_wg, self.head_dim, self.tile_n)
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
            LayoutEnum.from_tensor(mQ), qk_shape, self.dtype, self.num_wg
        )
        sK_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mK), qk_shape, self.dtype, self.kv_stages
        )
        sV_layout = sm90_utils.make_smem_layout_b(
            LayoutEnum.from_tensor(mV), pv_shape, self.dtype, self.kv_stages
        )
        load = cpasync.CopyBulkTensorTileG2SOp()
        tma_q, tma_mQ = cpasync.make_tiled_tma_atom(
            load, mQ, cute.slice_(sQ_layout, (None, None, 0)), (self.rows_wg, self.head_dim)
        )
        tma_k, tma_mK = cpasync.make_tiled_tma_atom(
            load, mK, cute.slice_(sK_layout, (None, None, 0)), (self.tile_n, self.head_dim)
        )
        tma_v, tma_mV = cpasync.make_tiled_tma_atom(
            load, mV, cute.slice_(sV_layout, (None, None, 0)), (self.head_dim, self.tile_n)
        )
        self.q_bytes = cute.size_in_bytes(self.dtype, cute.slice_(sQ_layout, (None, None, 0)))
        self.kv_bytes = cute.size_in_bytes(self.dtype, cute.slice_(sK_layout, (None, None, 0)))
        kv_elements = max(cute.cosize(sK_layout), cute.cosize(sV_layout))

        @cute.struct
        class SharedStorage:
            q_barriers: cute.struct.MemRange[cutlass.Int64, self.num_wg * 2]
            kv_barriers: cute.struct.MemRange[cutlass.Int64, self.kv_stages * 2]
            order_barriers: cute.struct.MemRange[cutlass.Int64, self.num_wg]
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
            grid=[q_tiles, heads_q, batch],
            block=[self.tiles.threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=1,
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
        m_tile, head, head_k, seq = self.query_tile_of_block(mK.shape[2])
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = cute.arch.make_warp_uniform(tidx // 128)

        smem = SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        q_pipe, kv_pipe, order = self.query_side_pipelines(storage, wg)
        q_producer, _ = q_pipe.make_participants()
        kv_producer, kv_consumer = kv_pipe.make_participants()
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sK = storage.sKV.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = cute.make_tensor(cute.recast_ptr(sK.iterator, sV_layout.inner), sV_layout.outer)

        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        sequence = self.read_sequence(seq_info, seq)
        q_start, k_start, seqlen_q = sequence[:3]
        row_first = m_tile * self.tile_m

        if row_first < seqlen_q:
            n_begin, full_begin, full_end, n_end = self.key_tile_runs(row_first, sequence, left_chunks)

            if wg == 0:
                cute.arch.setmaxregister_decrease(self.producer_registers)
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
                        q_start,
                        k_start,
                        m_tile,
                        head,
                        head_k,
                        n_begin,
                        n_end,
                    )
            else:
                cute.arch.setmaxregister_increase(self.consumer_registers)
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
                    q_start,
                    m_tile,
                    head,
                    sequence,
                    left_chunks,
                    softmax_scale,
                    n_begin,
                    full_begin,
                    full_end,
                    n_end,
                )

    @cute.jit
    def query_tile_of_block(self, heads_k):
        """This CTA's (query tile, query head, KV head, sequence). The heaviest query tiles (most
        keys) run first: better tail balance across the grid."""
        block_m, head, seq = cute.arch.block_idx()
        grid_m, heads_q, _ = cute.arch.grid_dim()
        m_tile = grid_m - 1 - block_m
        head_k = head // (heads_q // heads_k)
        return m_tile, head, head_k, seq

    @cute.jit
    def query_side_pipelines(self, storage, wg: cutlass.Int32):
        """The Q buffers (one per warpgroup, loaded once), the K/V ring and the warpgroups'
        ping-pong order of a kernel whose CTA owns query rows."""
        q_pipe = self.tma_pipeline(storage.q_barriers.data_ptr(), self.num_wg, 4, self.q_bytes)
        kv_pipe = self.tma_pipeline(
            storage.kv_barriers.data_ptr(), self.kv_stages, 4 * self.num_wg, self.kv_bytes
        )
        return q_pipe, kv_pipe, self.warpgroup_order(storage.order_barriers.data_ptr(), wg)

    @cute.jit
    def tma_pipeline(self, barriers: cute.Pointer, stages: int, consumer_warps: int, tx_bytes: int):
        """A ring of ``stages`` shared-memory buffers filled by TMA from one producer thread."""
        return pipeline.PipelineTmaAsync.create(
            barrier_storage=barriers,
            num_stages=stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, consumer_warps),
            tx_count=tx_bytes,
            defer_sync=True,
        )

    @cute.jit
    def warpgroup_order(self, barriers: cute.Pointer, wg: cutlass.Int32):
        """Ping-pong: the consumer warpgroups take turns issuing their GEMMs, so one's softmax
        overlaps the other's tensor-core work."""
        return pipeline.PipelineOrder.create(
            barrier_storage=barriers,
            depth=1,
            length=self.num_wg,
            group_id=wg - 1,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 128),
            defer_sync=True,
        )

    @cute.jit
    def read_sequence(self, seq_info: cute.Tensor, seq: cutlass.Int32):
        """One row of the per-sequence table: q start, k start, Sq, Sk, chunk_q, chunk_k, offsets."""
        return (
            seq_info[seq, Q_START],
            seq_info[seq, K_START],
            seq_info[seq, SEQLEN_Q],
            seq_info[seq, SEQLEN_K],
            seq_info[seq, CHUNK_Q],
            seq_info[seq, CHUNK_K],
            seq_info[seq, Q_OFFSET],
            seq_info[seq, K_OFFSET],
        )

    @cute.jit
    def key_tile_runs(self, row_first: cutlass.Int32, sequence: tuple, left_chunks: cutlass.Int32):
        """Key tiles of the query rows [row_first, row_first + tile_m): [n_begin, n_end), of which
        [full_begin, full_end) are fully visible to every row. Visible keys of the first and the
        last row bound those of every row in between."""
        seqlen_q = sequence[2]
        row_last = cutlass.min(row_first + self.tile_m, seqlen_q) - 1
        lo_first, hi_first = self.key_bounds(row_first, sequence, left_chunks)
        lo_last, hi_last = self.key_bounds(row_last, sequence, left_chunks)
        n_begin = lo_first // self.tile_n
        n_end = (hi_last + self.tile_n - 1) // self.tile_n
        if hi_last <= lo_first:
            n_end = n_begin
        full_begin = cutlass.min(cutlass.max((lo_last + self.tile_n - 1) // self.tile_n, n_begin), n_end)
        full_end = cutlass.min(cutlass.max(hi_first // self.tile_n, full_begin), n_end)
        return n_begin, full_begin, full_end, n_end

    @cute.jit
    def key_bounds(self, row: cutlass.Int32, sequence: tuple, left_chunks: cutlass.Int32):
        """Visible keys [lo, hi) of one sequence-local query row: the chunk rule, clipped to [0, Sk]."""
        _, _, _, seqlen_k, chunk_q, chunk_k, q_offset, k_offset = sequence
        q_chunk = (row + q_offset) // chunk_q
        hi = cutlass.min(cutlass.max((q_chunk + 1) * chunk_k - k_offset, 0), seqlen_k)
        lo = cutlass.Int32(0)
        if left_chunks >= 0:
            lo = cutlass.min(cutlass.max((q_chunk - left_chunks) * chunk_k - k_offset, 0), hi)
        return lo, hi

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
        q_start: cutlass.Int32,
        k_start: cutlass.Int32,
        m_tile: cutlass.Int32,
        head: cutlass.Int32,
        head_k: cutlass.Int32,
        n_begin: cutlass.Int32,
        n_end: cutlass.Int32,
    ):
        """One warp: Q of both warpgroups, then K and V tile by tile, in the consumers' order."""
        gQ = cute.local_tile(
            cute.domain_offset((q_start, 0), mQ[None, None, head]), (self.rows_wg, self.head_dim), (None, 0)
        )
        gK = cute.local_tile(
            cute.domain_offset((k_start, 0), mK[None, None, head_k]), (self.tile_n, self.head_dim), (None, 0)
        )
        gV = cute.local_tile(
            cute.domain_offset((0, k_start), mV[None, None, head_k]), (self.head_dim, self.tile_n), (0, None)
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
        for i in cutlass.range_constexpr(self.num_wg):
            handle = q_producer.acquire_and_advance()
            cute.copy(
                tma_q,
                tQgQ[None, m_tile * self.num_wg + i],
                tQsQ[None, handle.index],
                tma_bar_ptr=handle.barrier,
            )
        for n in cutlass.range(n_begin, n_end, unroll=1):
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
        q_start: cutlass.Int32,
        m_tile: cutlass.Int32,
        head: cutlass.Int32,
        sequence: tuple,
        left_chunks: cutlass.Int32,
        softmax_scale: cutlass.Float32,
        n_begin: cutlass.Int32,
        full_begin: cutlass.Int32,
        full_end: cutlass.Int32,
        n_end: cutlass.Int32,
    ):
        """One warpgroup: 64 query rows against every loaded key tile, then the epilogue."""
        seqlen_q = sequence[2]
        qk_thr = qk_mma.get_slice(thread)
        pv_thr = pv_mma.get_slice(thread)
        tSrQ = qk_thr.make_fragment_A(qk_thr.partition_A(sQ))
        tSrK = qk_thr.make_fragment_B(qk_thr.partition_B(sK))
        tOrV = pv_thr.make_fragment_B(pv_thr.partition_B(sV))
        acc_o = pv_thr.make_fragment_C(pv_thr.partition_shape_C((self.rows_wg, self.head_dim)))
        acc_o.fill(0.0)
        pv_mma.set(warpgroup.Field.ACCUMULATE, True)  # O accumulates from zero over every tile
        acc_s_shape = qk_thr.partition_shape_C((self.rows_wg, self.tile_n))

        # Sequence-local row of each accumulator row this thread holds, and its visible keys.
        row_base = m_tile * self.tile_m + wg * self.rows_wg
        tScS = _rows_cols(qk_thr.partition_C(cute.make_identity_tensor((self.rows_wg, self.tile_n))))
        rows = cute.size(tScS, mode=[0])
        key_lo = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Int32)
        key_hi = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Int32)
        for r in cutlass.range_constexpr(rows):
            lo, hi = self.key_bounds(row_base + tScS[r, 0][0], sequence, left_chunks)
            key_lo[r] = lo
            key_hi[r] = hi
        row_max = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        row_sum = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        row_max.fill(-cutlass.Float32.inf)
        row_sum.fill(0.0)
        scale_log2 = softmax_scale * LOG2_E

        # Q tile ``wg`` sits in stage ``wg`` of the Q ring, loaded once.
        q_pipe.consumer_wait(pipeline.PipelineState(self.num_wg, wg, wg, cutlass.Int32(0)))
        tSrQ_wg = tSrQ[None, None, None, wg]
        # P of the previous key tile, in registers as the A operand of its PV GEMM.
        p_operand = cute.make_rmem_tensor(
            _accumulator_as_operand_a(qk_thr.make_fragment_C(acc_s_shape).layout), self.dtype
        )
        correction = cute.make_rmem_tensor(cute.make_layout(rows), cutlass.Float32)
        softmax = (tScS, key_lo, key_hi, row_max, row_sum, correction, scale_log2)

        operands = (pv_mma, tSrQ_wg, tSrK, tOrV, acc_o, p_operand, acc_s_shape)
        if n_begin < n_end:
            # The first key tile (masked if it is not fully visible), then three runs of key
            # tiles: masked leading, fully visible, masked trailing. Each step after the first
            # overlaps this tile's softmax with the previous tile's PV GEMM.
            if n_begin < full_begin or n_begin >= full_end:
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    True, True, n_begin, qk_mma, operands, kv_consumer, order, softmax
                )
            else:
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    False, True, n_begin, qk_mma, operands, kv_consumer, order, softmax
                )
            for n in cutlass.range(n_begin + 1, full_begin, unroll=1):
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    True, False, n, qk_mma, operands, kv_consumer, order, softmax
                )
            for n in cutlass.range(cutlass.max(full_begin, n_begin + 1), full_end, unroll=1):
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    False, False, n, qk_mma, operands, kv_consumer, order, softmax
                )
            for n in cutlass.range(cutlass.max(full_end, n_begin + 1), n_end, unroll=1):
                qk_mma, kv_consumer, order = self.overlapped_tile(
                    True, False, n, qk_mma, operands, kv_consumer, order, softmax
                )
            # The last tile's PV.
            v_handle = kv_consumer.wait_and_advance()
            warpgroup.fence()
            for k in cutlass.range_constexpr(cute.size(p_operand, mode=[2])):
                cute.gemm(pv_mma, acc_o, p_operand[None, None, k], tOrV[None, None, k, v_handle.index], acc_o)
            warpgroup.commit_group()
            warpgroup.wait_group(0)
            v_handle.release()

        self.epilogue(
            pv_thr,
            acc_o,
            row_max,
            row_sum,
            sQ[None, None, wg],
            mO,
            mLSE,
            wg,
            thread,
            q_start,
            row_base,
            head,
            seqlen_q,
            softmax_scale,
        )

    @cute.jit
    def overlapped_tile(
        self,
        masked: cutlass.Constexpr,
        first: cutlass.Constexpr,
        n: cutlass.Int32,
        qk_mma: cute.TiledMma,
        operands: tuple,
        kv_consumer: pipeline.PipelineConsumer,
        order: pipeline.PipelineOrder,
        softmax: tuple,
    ):
        """Issue S = Q K^T for tile n and O += P V for tile n - 1 together; while PV runs, do the
        softmax of tile n; then rescale O and keep P of tile n for the next step. The ``first``
        tile has no PV to overlap."""
        pv_mma, tSrQ, tSrK, tOrV, acc_o, p_operand, acc_s_shape = operands
        acc_s = cute.make_rmem_tensor(acc_s_shape, cutlass.Float32)
        if cutlass.const_expr(not first):
            v_handle = kv_consumer.wait_and_advance()  # V of tile n - 1 (the ring holds K, V, K, V, ...)
        k_handle = kv_consumer.wait_and_advance()  # K of tile n
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
        order.arrive()
        if cutlass.const_expr(first):
            warpgroup.wait_group(0)
        else:
            warpgroup.wait_group(1)
        k_handle.release()
        self.online_softmax(masked, n, acc_s, *softmax)
        if cutlass.const_expr(not first):
            warpgroup.wait_group(0)
            v_handle.release()
            o = _rows_cols(acc_o)
            correction = softmax[5]
            for r in cutlass.range_constexpr(cute.size(o, mode=[0])):
                for c in cutlass.range_constexpr(cute.size(o, mode=[1])):
                    o[r, c] = o[r, c] * correction[r]
        _as_acc(p_operand, acc_s).store(acc_s.load().to(self.dtype))
        return qk_mma, kv_consumer, order

    @cute.jit
    def online_softmax(
        self,
        masked: cutlass.Constexpr,
        n: cutlass.Int32,
        acc_s: cute.Tensor,
        tScS: cute.Tensor,
        key_lo: cute.Tensor,
        key_hi: cute.Tensor,
        row_max: cute.Tensor,
        row_sum: cute.Tensor,
        correction: cute.Tensor,
        scale_log2: cutlass.Float32,
    ):
        """Scores of one key tile -> unnormalized probabilities in place; the running max and sum
        per row, and the factor by which O must shrink for the new max (``correction``)."""
        s = _rows_cols(acc_s)
        key_first = n * self.tile_n
        for r in cutlass.range_constexpr(cute.size(s, mode=[0])):
            if cutlass.const_expr(masked):
                lo = key_lo[r] - key_first
                hi = key_hi[r] - key_first
                for c in cutlass.range_constexpr(cute.size(s, mode=[1])):
                    col = tScS[0, c][1]
                    if col < lo or col >= hi:
                        s[r, c] = -cutlass.Float32.inf
            tile_max = s[r, 0]
            for c in cutlass.range_constexpr(1, cute.size(s, mode=[1])):
                tile_max = cute.arch.fmax(tile_max, s[r, c])
            tile_max = cute.arch.warp_reduction_max(tile_max, threads_in_group=4)
            new_max = cute.arch.fmax(row_max[r], tile_max)
            # A row that has seen no key yet keeps max -inf; subtract 0 so exp2 gives 0, not NaN.
            safe_max = new_max
            if new_max == -cutlass.Float32.inf:
                safe_max = 0.0
            shift = safe_max * scale_log2
            correction[r] = cute.math.exp2(row_max[r] * scale_log2 - shift, fastmath=True)
            row_max[r] = new_max
            tile_sum = cutlass.Float32(0.0)
            for c in cutlass.range_constexpr(cute.size(s, mode=[1])):
                p = cute.math.exp2(s[r, c] * scale_log2 - shift, fastmath=True)
                s[r, c] = p
                tile_sum += p
            row_sum[r] = row_sum[r] * correction[r] + tile_sum

    @cute.jit
    def epilogue(
        self,
        pv_thr: cute.ThrMma,
        acc_o: cute.Tensor,
        row_max: cute.Tensor,
        row_sum: cute.Tensor,
        sO: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        wg: cutlass.Int32,
        thread: cutlass.Int32,
        q_start: cutlass.Int32,
        row_base: cutlass.Int32,
        head: cutlass.Int32,
        seqlen_q: cutlass.Int32,
        softmax_scale: cutlass.Float32,
    ):
        """Normalize O, stage it in this warpgroup's Q buffer (free once the last QK^T is done) and
        store the rows inside the sequence with 16-byte copies; write the natural-log LSE
        (-inf where a row saw no key)."""
        o = _rows_cols(acc_o)
        tOcO = _rows_cols(pv_thr.partition_C(cute.make_identity_tensor((self.rows_wg, self.head_dim))))
        out = cute.make_rmem_tensor(acc_o.layout, self.dtype)
        out_rc = _rows_cols(out)
        for r in cutlass.range_constexpr(cute.size(o, mode=[0])):
            total = cute.arch.warp_reduction_sum(row_sum[r], threads_in_group=4)
            inverse = cutlass.Float32(0.0)
            lse = -cutlass.Float32.inf
            if total > 0.0:
                inverse = cute.arch.rcp_approx(total)
                lse = row_max[r] * softmax_scale + cute.math.log(total, fastmath=True)
            for c in cutlass.range_constexpr(cute.size(o, mode=[1])):
                out_rc[r, c] = (o[r, c] * inverse).to(self.dtype)
            row = tOcO[r, 0][0]
            if row_base + row < seqlen_q and tOcO[0, 0][1] == 0:
                mLSE[q_start + row_base + row, head] = lse
        self.store_rows(pv_thr, out, sO, mO, wg, thread, q_start, row_base, head, seqlen_q)

    @cute.jit
    def store_rows(
        self,
        thr_mma: cute.ThrMma,
        out: cute.Tensor,
        staging: cute.Tensor,
        mOut: cute.Tensor,
        wg: cutlass.Int32,
        thread: cutlass.Int32,
        q_start: cutlass.Int32,
        row_base: cutlass.Int32,
        head: cutlass.Int32,
        seqlen: cutlass.Int32,
    ):
        """A warpgroup's 64 x D result from registers to the rows of ``mOut`` inside the sequence:
        through shared memory, then 16-byte vector stores."""
        cute.autovec_copy(out, thr_mma.partition_C(staging))
        cute.arch.barrier(barrier_id=1 + wg, number_of_threads=128)
        gOut = cute.local_tile(
            cute.domain_offset((q_start + row_base, 0), mOut[None, None, head]),
            (self.rows_wg, self.head_dim),
            (0, 0),
        )
        vector = 128 // self.dtype.width
        threads_per_row = self.head_dim // vector
        store = cute.make_tiled_copy_tv(
            cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128),
            cute.make_ordered_layout((128 // threads_per_row, threads_per_row), order=(1, 0)),
            cute.make_layout((1, vector)),
        )
        thr_store = store.get_slice(thread)
        src = thr_store.partition_S(staging)
        dst = thr_store.partition_D(gOut)
        coords = thr_store.partition_S(cute.make_identity_tensor((self.rows_wg, self.head_dim)))
        for m in cutlass.range_constexpr(cute.size(src, mode=[1])):
            if row_base + coords[0, m, 0][0] < seqlen:
                cute.copy(store, src[None, m, None], dst[None, m, None])
