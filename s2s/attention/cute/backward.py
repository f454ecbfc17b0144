"""The backward pass on the CuTe kernels, from what the forward kept (packed inputs, output,
LSE and per-sequence table): delta = rowsum(dO * O), then either

- the fused kernel (default): key tiles walk the query tiles that see them and produce dK, dV
  and dQ, dQ added into a float32 buffer by TMA reduce-adds (five GEMMs per tile pair); the
  order of those additions varies, so dQ can differ in its last bits from run to run; or
- the deterministic pair (``deterministic=True``, or ``torch.use_deterministic_algorithms``):
  a dQ kernel (query tiles walk their key tiles) and a dK/dV kernel; every output row has one
  owner, so gradients are bit-identical on repeat, at seven GEMMs per tile pair.
"""

from __future__ import annotations

import functools

import torch

from s2s.attention.cute.launch import (
    compile_kernel,
    kernel_arguments,
    pointer,
    sizes_of,
    specialization_name,
)
from s2s.attention.problem import AttentionProblem

# Float32 pointers among each kernel's tensors (q, k, v, do, lse, delta, then its outputs).
FLOAT32_POINTERS = {
    "dq": (False,) * 4 + (True, True, False),
    "dkdv": (False,) * 4 + (True, True, True, False, False),
    "fused": (False,) * 4 + (True, True, True, False, False),
}


def backward_tiles(head_dim: int, kind: str = "fused"):
    """Two consumer warpgroups of 64 rows: the accumulators of a step fit in 240 registers.
    The ``"dq"`` kernel walks key tiles like the forward (``ForwardTiles``); the ``"dkdv"`` and
    ``"fused"`` kernels own 128 keys and walk 64-row query tiles (``KeyTiles``). The fused
    kernel keeps three Q/dO stages: with its dS and dQ staging buffers, four would overflow the
    227 KB of shared memory (three leave 1 KB)."""
    from s2s.attention.cute.tiles import ForwardTiles, KeyTiles

    if kind == "dq":
        return ForwardTiles(head_dim=head_dim, consumer_warpgroups=2, kv_stages=4)
    return KeyTiles(head_dim=head_dim, consumer_warpgroups=2, q_stages=3 if kind == "fused" else 4)


def compile_backward(kind: str, dtype: torch.dtype, tiles):
    """Build the ``"fused"`` kernel, or the deterministic pair's ``"dq"`` or ``"dkdv"`` kernel."""
    from s2s.attention.cute.backward_dkdv_sm90 import ChunkAttentionBackwardDkDvSm90
    from s2s.attention.cute.backward_dq_sm90 import ChunkAttentionBackwardDqSm90

    if kind == "dq":
        kernel = ChunkAttentionBackwardDqSm90(tiles)
    else:  # the fused kernel is the dK/dV kernel with dQ
        kernel = ChunkAttentionBackwardDkDvSm90(tiles, with_dq=kind == "fused")
    return compile_kernel(kernel, dtype, tiles.head_dim, FLOAT32_POINTERS[kind])


@functools.cache
def compiled_backward(kind: str, dtype: torch.dtype, tiles):
    """One backward kernel per (kind, dtype, tile shape), in memory and in the disk cache."""
    from s2s.attention.cute.kernel_cache import load_or_build

    return load_or_build(
        specialization_name(f"bwd_{kind}", dtype, tiles), lambda: compile_backward(kind, dtype, tiles)
    )


def compile_prologue(dtype: torch.dtype, head_dim: int, zero_dq: bool):
    """Build the delta (and zeroed dQ buffer) pass for one (dtype, head dim)."""
    import cuda.bindings.driver as cuda
    import cutlass
    import cutlass.cute as cute

    from s2s.attention.cute.backward_prologue_sm90 import BackwardPrologueSm90

    rows = torch.empty(256, 2, head_dim, dtype=dtype)
    stats = torch.empty(2, 256, dtype=torch.float32)
    pointers = [pointer(t) for t in (rows, rows, stats, stats)]
    sizes = (cutlass.Int32(256), cutlass.Int32(2))
    return cute.compile(BackwardPrologueSm90(head_dim, zero_dq), *pointers, *sizes, cuda.CUstream(0))


@functools.cache
def compiled_prologue(dtype: torch.dtype, head_dim: int, zero_dq: bool):
    from s2s.attention.cute.kernel_cache import load_or_build

    name = f"bwd_prologue_sm90_{str(dtype).removeprefix('torch.')}_d{head_dim}_zero{int(zero_dq)}"
    return load_or_build(name, lambda: compile_prologue(dtype, head_dim, zero_dq))


def prologue(out: torch.Tensor, grad_out: torch.Tensor, zero_dq: bool, stream):
    """delta (Hq, total_q) = rowsum(dO * O) in float32, and a zeroed float32 dQ buffer (or None)."""
    import cutlass

    total_q, heads = out.shape[:2]
    delta = torch.empty(heads, total_q, dtype=torch.float32, device=out.device)
    # Without a dQ buffer the kernel never touches its pointer: delta stands in.
    dq_accum = torch.empty(out.shape, dtype=torch.float32, device=out.device) if zero_dq else delta
    kernel = compiled_prologue(out.dtype, out.shape[2], zero_dq)
    pointers = (pointer(t) for t in (out, grad_out, delta, dq_accum))
    kernel(*pointers, cutlass.Int32(total_q), cutlass.Int32(heads), stream)
    return delta, (dq_accum if zero_dq else None)


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
    may give the dQ, dK, dV buffers to write (tests pass NaN-filled ones)."""
    import cuda.bindings.driver as cuda

    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if grads is None:
        grads = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
    for name, grad, like in zip(("dq", "dk", "dv"), grads, (q, k, v), strict=True):
        if grad.shape != like.shape or grad.dtype != like.dtype or not grad.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {like.dtype} buffer of shape {tuple(like.shape)}")
    dq, dk, dv = grads
    grad_out = grad_out.contiguous()
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    delta, dq_accum = prologue(out, grad_out, not deterministic, stream)
    if problem.rows_k < k.shape[0]:  # keys outside every sequence: no kernel writes them
        dk[problem.rows_k :] = 0
        dv[problem.rows_k :] = 0
    left = -1 if problem.chunks.left_chunks is None else problem.chunks.left_chunks
    inputs, sizes, scale = [q, k, v, grad_out, lse, delta], sizes_of(q, k), problem.softmax_scale
    key_tiles = backward_tiles(problem.head_dim, "dkdv")
    k_tiles = max(1, -(-problem.max_seqlen_k // key_tiles.tile_n))
    if not deterministic:
        fused = compiled_backward("fused", problem.dtype, backward_tiles(problem.head_dim, "fused"))
        fused(*kernel_arguments([*inputs, dq_accum, dk, dv], sizes, table, k_tiles, left, scale, stream))
        dq.copy_(dq_accum)
        return dq, dk, dv

    if problem.rows_q < q.shape[0]:
        dq[problem.rows_q :] = 0
    query_tiles = backward_tiles(problem.head_dim, "dq")
    q_tiles = max(1, -(-problem.max_seqlen_q // query_tiles.tile_m))
    dq_kernel = compiled_backward("dq", problem.dtype, query_tiles)
    dq_kernel(*kernel_arguments([*inputs, dq], sizes, table, q_tiles, left, scale, stream))
    dkdv_kernel = compiled_backward("dkdv", problem.dtype, key_tiles)
    # Without dQ the kernel never touches its dQ pointer: delta stands in.
    dkdv_kernel(*kernel_arguments([*inputs, delta, dk, dv], sizes, table, k_tiles, left, scale, stream))
    return dq, dk, dv
