"""What each kernel's per-tile step reads, by name: the GEMM fragments and accumulators a
consumer warpgroup sets up once, and the per-row state its tiles share. Compile-time bundles of
DSL values, never kernel arguments: they exist while a kernel is traced and emit no code of their
own, so the generated code is the same as with the values passed one by one (gated by
``scripts/dump_kernel_sass.py``).

Fragment names follow CuTe's convention: ``t<partitioned by><lives in><tensor>``, so ``tSrQ`` is Q
in registers as partitioned for the S GEMM and ``tGrQt`` Q^T as partitioned for the dK/dV GEMMs;
a shape is the accumulator's, for tiles made afresh per step."""

from __future__ import annotations

from dataclasses import dataclass

import cutlass
import cutlass.cute as cute

from s2s.attention.cute.mask import ChunkMask, RowKeyBounds
from s2s.attention.cute.softmax import OnlineSoftmax


@dataclass(frozen=True)
class ForwardOperands:
    """One forward warpgroup's GEMMs over the key tiles: S = Q K^T, then O += P V."""

    pv_mma: cute.TiledMma
    tSrQ: cute.Tensor  # this warpgroup's Q tile, loaded once
    tSrK: cute.Tensor  # K, per stage of the K/V ring
    tOrV: cute.Tensor  # V, per stage of the K/V ring
    acc_o: cute.Tensor
    p_operand: cute.Tensor  # P of the previous key tile, the A operand of its PV GEMM
    acc_s_shape: object


@dataclass(frozen=True)
class ForwardRows:
    """The running softmax of a warpgroup's query rows and the keys each row sees."""

    softmax: OnlineSoftmax
    bounds: RowKeyBounds


@dataclass(frozen=True)
class DqOperands:
    """One warpgroup of the deterministic dQ kernel: S = Q K^T and dP = dO V^T per key tile, then
    dQ += dS K."""

    dq_mma: cute.TiledMma
    tSrQ: cute.Tensor
    tSrdO: cute.Tensor
    tSrK: cute.Tensor  # K and V, per stage of the K/V ring (V is the B operand of dP too)
    tQrKt: cute.Tensor  # K^T as the B operand of dQ += dS K
    acc_dq: cute.Tensor
    ds_operand: cute.Tensor
    acc_s_shape: object


@dataclass(frozen=True)
class DqRows:
    """Per accumulator row of the dQ kernel's thread: visible keys, LSE * log2(e) and delta."""

    bounds: RowKeyBounds
    lse_log2: cute.Tensor  # +inf where the row is past the sequence or sees no key
    delta: cute.Tensor
    scale_log2: cutlass.Float32


@dataclass(frozen=True)
class KeyKernelMmas:
    """The dK/dV kernel's tiled MMAs: S^T and dP^T (``st``), dK and dV (``grad``) and, with dQ,
    the dQ slice's."""

    st: cute.TiledMma
    grad: cute.TiledMma
    dq: cute.TiledMma | None = None


@dataclass(frozen=True)
class KeyKernelCopies:
    """The dK/dV kernel's TMA copies, each with the global tensor it reads or writes: K and V
    (loaded once), Q, dO and the row statistics (a ring), and with dQ the reduce-add of the dQ
    slices into float32 dQ."""

    k: cute.CopyAtom
    mK: cute.Tensor
    v: cute.CopyAtom
    mV: cute.Tensor
    q: cute.CopyAtom
    mQ: cute.Tensor
    do: cute.CopyAtom
    mdO: cute.Tensor
    stats: cute.CopyAtom
    mStats: cute.Tensor
    dq: cute.CopyAtom | None = None
    mdQ: cute.Tensor | None = None


@dataclass(frozen=True)
class KeySharedLayouts:
    """The swizzled shared-memory layouts of ``KeySharedTiles`` (K and V share one, Q and dO
    another)."""

    sK: object
    sQ: object
    sdS: object = None
    sdQ: object = None


@dataclass(frozen=True)
class KeySharedTiles:
    """The dK/dV kernel's shared memory: its keys, the Q/dO ring and, with dQ, the dS buffers and
    the dQ slices staged for the dQ warp."""

    sK: cute.Tensor
    sV: cute.Tensor
    sQ: cute.Tensor
    sdO: cute.Tensor
    sdS: cute.Tensor | None = None
    sdQ: cute.Tensor | None = None


@dataclass(frozen=True)
class KeyTileOperands:
    """One dK/dV warpgroup's GEMMs per query tile: S^T = K Q^T and dP^T = V dO^T, then
    dV += P^T dO and dK += dS^T Q."""

    grad_mma: cute.TiledMma
    tSrK: cute.Tensor  # this warpgroup's keys, loaded once
    tSrV: cute.Tensor
    tSrQ: cute.Tensor  # per stage of the Q/dO ring
    tSrdO: cute.Tensor
    tGrQt: cute.Tensor  # Q^T, the B operand of dK += dS^T Q
    tGrdOt: cute.Tensor  # dO^T, the B operand of dV += P^T dO
    acc_dk: cute.Tensor
    acc_dv: cute.Tensor
    p_operand: cute.Tensor
    ds_operand: cute.Tensor
    acc_st_shape: object


@dataclass(frozen=True)
class DqSliceOperands:
    """The fused backward's dQ work per query tile: dS^T to shared memory (``tSsdS``: a store
    object when hoisted, else a partition), then the warpgroup's dQ slice = dS K, staged for the
    dQ warp (``staging``: a store object when hoisted, else a partition)."""

    dq_mma: cute.TiledMma
    tSsdS: object
    tDrdS: cute.Tensor  # dS per buffer, the A operand of the dQ slice
    tDrKt: cute.Tensor  # K^T (both warpgroups' keys), its B operand
    acc_dq: cute.Tensor
    staging: object
    ds_store: object  # the stmatrix copy, when dS goes to shared memory that way


@dataclass(frozen=True)
class KeyColumns:
    """What turns a query tile's S^T and dP^T into P^T and dS^T: each thread's (key, query)
    coordinates, its warpgroup's first key, the staged row statistics and, masked, the visible
    keys of each row."""

    tScS: cute.Tensor
    key_base: cutlass.Int32
    sStats: cute.Tensor  # per Q/dO stage: LSE * log2(e), delta * softmax scale
    bounds: cute.Tensor  # this warpgroup's visible keys per row (``KeyTiles.row_statistics``)
    scale_log2: cutlass.Float32
    softmax_scale: cutlass.Float32


@dataclass(frozen=True)
class QueryTileStep:
    """Where one step of the dK/dV loop is: query tile ``m`` (of whichever query head of the
    group the producer loaded), the dS buffer it writes, and the thread's warpgroup and index in
    it."""

    m: cutlass.Int32
    mask: ChunkMask
    buffer: cutlass.Int32
    wg: cutlass.Int32
    thread: cutlass.Int32


@dataclass(frozen=True)
class RowStatistics:
    """128-row tiles: thread t's query row t: LSE * log2(e), delta * softmax scale and, masked,
    its visible keys [lo, hi) relative to the warpgroup's first key."""

    lse_log2: cutlass.Float32
    delta_scaled: cutlass.Float32
    lo: cutlass.Int32
    hi: cutlass.Int32


@dataclass(frozen=True)
class HalfRowStatistic:
    """64-row tiles in the split order, two threads a row: thread t < 64 has row t's LSE * log2(e)
    and first visible key, thread t + 64 its delta * softmax scale and past-last visible key."""

    value: cutlass.Float32
    bound: cutlass.Int32
