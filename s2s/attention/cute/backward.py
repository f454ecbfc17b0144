"""The backward pass on the CuTe kernels, from what the forward kept (packed inputs, output,
LSE and per-sequence table): delta = rowsum(dO * O), then either

- the fused kernel (default): key tiles walk the query tiles that see them and produce dK, dV
  and dQ, dQ added into a float32 buffer by TMA reduce-adds (five GEMMs per tile pair); the
  order of those additions varies, so dQ can differ in its last bits from run to run; at head
  dim 64 its query tiles have 128 rows (see ``backward_tiles``); or
- the deterministic pair (``deterministic=True``, or ``torch.use_deterministic_algorithms``):
  a dQ kernel (query tiles walk their key tiles) and a dK/dV kernel; every output row has one
  owner, so gradients are bit-identical on repeat, at seven GEMMs per tile pair.

``S2S_CUTE_BWD_D64`` and ``S2S_CUTE_BWD_D128`` (read on the host at every launch) pick the fused
kernel's tiling at head dim 64 and 128, for A/B runs in one process. At d64: ``wide`` (default)
128-row query tiles, each warpgroup computing 64 rows x 64 columns of dQ; ``legacy`` the 64-row
tiles with 64 x 32 dQ slices. At d128: ``wide`` (default) the 64-row tiles (FlashAttention's
shape at d128) with the d64 wide path's per-row statistics and stmatrix dS^T, and FlashAttention's
order within a tile (S^T and dP^T committed apart: P computed while dP^T's GEMM runs, dS while
dV's, dQ staged while dK's): 523 against 514 TFLOP/s at S 16k, 436 against 432 at 4k on an H200
(docs/benchmarks.md); ``legacy`` the same tiles in the order they had before.
Each tiling is its own specialization (its own name in the kernel cache).
"""

from __future__ import annotations

import functools
import os

import torch

from s2s.attention.cute.chunk_limits import kernel_left_chunks
from s2s.attention.cute.launch import compile_kernel, specialization_name
from s2s.attention.problem import AttentionProblem

BWD_D64_ENV = "S2S_CUTE_BWD_D64"
BWD_D128_ENV = "S2S_CUTE_BWD_D128"
BWD_TILINGS = ("wide", "legacy")
BWD_D64_TILINGS = BWD_TILINGS
# Per head dim: the variable that picks the fused kernel's tiling and its default (the faster
# tiling as measured on an H200, docs/benchmarks.md).
FUSED_TILING_CHOICES = {64: (BWD_D64_ENV, "wide"), 128: (BWD_D128_ENV, "wide")}


def fused_tiling(head_dim: int) -> str:
    """The fused backward's tiling at ``head_dim`` from its variable (``S2S_CUTE_BWD_D64`` or
    ``S2S_CUTE_BWD_D128``): wide or legacy. Other head dims have one tiling: legacy."""
    if head_dim not in FUSED_TILING_CHOICES:
        return "legacy"
    env, default = FUSED_TILING_CHOICES[head_dim]
    tiling = os.environ.get(env, default).strip().lower() or default
    if tiling not in BWD_TILINGS:
        raise ValueError(f"{env} must be one of {BWD_TILINGS}, got {tiling!r}")
    return tiling


def bwd_d64_tiling() -> str:
    """The fused backward's tiling at head dim 64 from ``S2S_CUTE_BWD_D64``: wide or legacy."""
    return fused_tiling(64)


def backward_tiles(head_dim: int, kind: str = "fused", tiling: str | None = None):
    """Two consumer warpgroups of 64 rows: the accumulators of a step fit in 240 registers.
    The ``"dq"`` kernel walks key tiles like the forward (``ForwardTiles``); the ``"dkdv"`` and
    ``"fused"`` kernels own 128 keys and walk 64-row query tiles (``KeyTiles``). The fused
    kernel keeps three Q/dO stages: with its dS and dQ staging buffers, four would overflow the
    227 KB of shared memory (three leave 1 KB).

    ``tiling`` (by default from ``fused_tiling``) picks the fused kernel's shape. At head dim
    64, ``"wide"`` walks 128-row query tiles: twice the GEMM work per pipeline stage, barrier and
    statistics exchange, dQ split by rows into 64 x 64 slices; its S^T and dP^T (64 x 128 per
    warpgroup) and dK/dV (64 x 64) fit in 240 registers as d128's 64 x 64 and 64 x 128 do. Two
    Q/dO stages of 128 rows: 32 KB of K/V, 64 KB of Q/dO, 64 KB of dS, 32 KB of dQ staging.
    At head dim 128 a 128-row tile would need 256 accumulator registers per thread (S^T, dP^T
    64 x 128 and dK, dV 64 x 128), so ``"wide"`` keeps 64-row tiles and 64 x 64 dQ slices
    (FlashAttention's sm90 d128 shape) and changes what happens within a tile
    (``KeyTiles.split_commits``)."""
    from s2s.attention.cute.tiles import ForwardTiles, KeyTiles

    if kind == "dq":
        return ForwardTiles(head_dim=head_dim, consumer_warpgroups=2, kv_stages=4)
    wide = kind == "fused" and (tiling or fused_tiling(head_dim)) == "wide"
    if wide and head_dim == 64:
        return KeyTiles(head_dim=head_dim, tile_m=128, consumer_warpgroups=2, q_stages=2)
    if wide and head_dim == 128:
        return KeyTiles(head_dim=head_dim, consumer_warpgroups=2, q_stages=3, split_commits=True)
    return KeyTiles(head_dim=head_dim, consumer_warpgroups=2, q_stages=3 if kind == "fused" else 4)


def compile_backward(kind: str, dtype: torch.dtype, tiles):
    """Build the ``"fused"`` kernel, or the deterministic pair's ``"dq"`` or ``"dkdv"`` kernel."""
    from s2s.attention.cute.arguments import BACKWARD_DKDV, BACKWARD_DQ
    from s2s.attention.cute.backward_dkdv_sm90 import ChunkAttentionBackwardDkDvSm90
    from s2s.attention.cute.backward_dq_sm90 import ChunkAttentionBackwardDqSm90

    if kind == "dq":
        return compile_kernel(ChunkAttentionBackwardDqSm90(tiles), BACKWARD_DQ, dtype, tiles.head_dim)
    # The fused kernel is the dK/dV kernel with dQ.
    kernel = ChunkAttentionBackwardDkDvSm90(tiles, with_dq=kind == "fused")
    return compile_kernel(kernel, BACKWARD_DKDV, dtype, tiles.head_dim)


@functools.cache
def compiled_backward(kind: str, dtype: torch.dtype, tiles):
    """One backward kernel per (kind, dtype, tile shape), in memory and in the disk cache."""
    from s2s.attention.cute.kernel_cache import load_or_build

    return load_or_build(
        specialization_name(f"bwd_{kind}", dtype, tiles), lambda: compile_backward(kind, dtype, tiles)
    )


def compile_prologue(dtype: torch.dtype, head_dim: int, zero_dq: bool):
    """Build the delta (and zeroed dQ buffer) pass for one (dtype, head dim)."""
    from s2s.attention.cute.arguments import PROLOGUE
    from s2s.attention.cute.backward_prologue_sm90 import BackwardPrologueSm90

    return compile_kernel(BackwardPrologueSm90(head_dim, zero_dq), PROLOGUE, dtype, head_dim)


@functools.cache
def compiled_prologue(dtype: torch.dtype, head_dim: int, zero_dq: bool):
    from s2s.attention.cute.kernel_cache import load_or_build

    name = f"bwd_prologue_sm90_{str(dtype).removeprefix('torch.')}_d{head_dim}_zero{int(zero_dq)}"
    return load_or_build(name, lambda: compile_prologue(dtype, head_dim, zero_dq))


def prologue(
    out: torch.Tensor,
    grad_out: torch.Tensor,
    lse: torch.Tensor,
    table: torch.Tensor,
    *,
    softmax_scale: float,
    zero_dq: bool,
    stream,
):
    """delta (Hq, total_q) = rowsum(dO * O) in float32, the row statistics (Hq, 2,
    ``row_stats_rows(total_q, batch)``: LSE * log2(e) and delta * scale, each sequence's rows
    from ``row_stats_start``; the rows between sequences are not written) and a zeroed float32
    dQ buffer (or None)."""
    from s2s.attention.cute.arguments import PROLOGUE
    from s2s.attention.cute.views import ROW_STATISTICS, row_stats_rows

    total_q, heads = out.shape[:2]
    batch = table.shape[0]
    delta = torch.empty(heads, total_q, dtype=torch.float32, device=out.device)
    row_stats = torch.empty(
        heads, ROW_STATISTICS, row_stats_rows(total_q, batch), dtype=torch.float32, device=out.device
    )
    # Without a dQ buffer the kernel never touches its pointer: delta stands in.
    dq_accum = torch.empty(out.shape, dtype=torch.float32, device=out.device) if zero_dq else delta
    kernel = compiled_prologue(out.dtype, out.shape[2], zero_dq)
    values = {
        "o": out,
        "do": grad_out,
        "lse": lse,
        "delta": delta,
        "row_stats": row_stats,
        "dq_accum": dq_accum,
        "seq": table,
        "total_q": total_q,
        "heads_q": heads,
        "batch": batch,
        "softmax_scale": softmax_scale,
    }
    kernel(*PROLOGUE.arguments(values, stream))
    return delta, row_stats, (dq_accum if zero_dq else None)


def backward(
    problem: AttentionProblem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    table: torch.Tensor,
    grad_out: torch.Tensor,
    deterministic: bool | None = None,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV in packed (total, H, D) form from packed contiguous q, k, v, out, the LSE
    (Hq, total_q) and the per-sequence table. Rows outside every sequence get zero gradients.
    ``deterministic=None`` follows ``torch.are_deterministic_algorithms_enabled()``. ``grads``
    may give the dQ, dK, dV buffers to write (tests pass NaN-filled ones).

    With ``seqused_q``, the rows past it (padding rows of their sequence) must hold FINITE values
    in q and grad_out, as flash-attention's seqused_q requires: the kernels read whole query tiles,
    and such a row enters the GEMMs with LSE +inf, so P = 0 and dS = 0 multiply its Q and dO
    rows into dK and dV, and 0 x NaN is NaN (so is 0 x inf: values so large that a score or a
    dO . V overflows float32 break it too; activations do not). They are not copied here (a
    zeroed copy of q and dO would cost a third of what skipping the rows saves). Their dQ rows
    are zero: the fused kernel's come from the prologue's zeroed float32 buffer (it zeroes every
    row, in a sequence or not, and a padding row adds 0 x K to it); the deterministic dQ kernel
    writes no row past a sequence's length, so its buffer starts at zero there."""
    import cuda.bindings.driver as cuda

    from s2s.attention.cute.arguments import BACKWARD_DKDV, BACKWARD_DQ, attention_sizes

    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    # The deterministic dQ kernel writes no row past seqused_q: zeros from the allocation on.
    unwritten_dq = deterministic and problem.seqused_q is not None
    given = grads is not None
    if grads is None:
        dq = torch.zeros_like(q) if unwritten_dq else torch.empty_like(q)
        grads = (dq, torch.empty_like(k), torch.empty_like(v))
    for name, grad, like in zip(("dq", "dk", "dv"), grads, (q, k, v), strict=True):
        if grad.shape != like.shape or grad.dtype != like.dtype or not grad.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {like.dtype} buffer of shape {tuple(like.shape)}")
    dq, dk, dv = grads
    if unwritten_dq and given:
        dq.masked_fill_(~problem.used_query_rows().reshape(-1, 1, 1), 0)
    grad_out = grad_out.contiguous()
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    delta, row_stats, dq_accum = prologue(
        out,
        grad_out,
        lse,
        table,
        softmax_scale=problem.softmax_scale,
        zero_dq=not deterministic,
        stream=stream,
    )
    if problem.rows_k < k.shape[0]:  # keys outside every sequence: no kernel writes them
        dk[problem.rows_k :] = 0
        dv[problem.rows_k :] = 0
    left = kernel_left_chunks(problem)
    tensors = {"q": q, "k": k, "v": v, "do": grad_out}
    key_tiles = backward_tiles(problem.head_dim, "dkdv")
    k_tiles = max(1, -(-problem.max_seqlen_k // key_tiles.tile_n))
    key_sizes = attention_sizes(q, k, table, k_tiles, left, problem.softmax_scale)
    if not deterministic:
        fused = compiled_backward("fused", problem.dtype, backward_tiles(problem.head_dim, "fused"))
        outputs = {"dq_accum": dq_accum, "dk": dk, "dv": dv}
        fused(*BACKWARD_DKDV.arguments({**tensors, "row_stats": row_stats, **outputs, **key_sizes}, stream))
        dq.copy_(dq_accum)
        return dq, dk, dv

    if problem.rows_q < q.shape[0]:
        dq[problem.rows_q :] = 0
    query_tiles = backward_tiles(problem.head_dim, "dq")
    q_tiles = max(1, -(-problem.max_seqlen_q // query_tiles.tile_m))
    dq_kernel = compiled_backward("dq", problem.dtype, query_tiles)
    query_sizes = attention_sizes(q, k, table, q_tiles, left, problem.softmax_scale)
    inputs = {**tensors, "lse": lse, "delta": delta}
    dq_kernel(*BACKWARD_DQ.arguments({**inputs, "dq": dq, **query_sizes}, stream))
    dkdv_kernel = compiled_backward("dkdv", problem.dtype, key_tiles)
    # Without dQ the kernel never touches its dQ pointer: delta stands in.
    outputs = {"dq_accum": delta, "dk": dk, "dv": dv}
    dkdv_kernel(*BACKWARD_DKDV.arguments({**tensors, "row_stats": row_stats, **outputs, **key_sizes}, stream))
    return dq, dk, dv
