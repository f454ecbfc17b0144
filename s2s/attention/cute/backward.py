"""The backward pass on the CuTe kernels: delta = rowsum(dO * O), then the dQ kernel (query tiles
walk their key tiles) and the dK/dV kernel (key tiles walk the query tiles that see them).

Both kernels own their output rows, so gradients are deterministic: bit-identical on repeat.
"""

from __future__ import annotations

import functools

import torch

from s2s.attention.cute.launch import (
    compile_kernel,
    kernel_arguments,
    rows_in_sequences,
    sizes_of,
    specialization_name,
)
from s2s.attention.problem import AttentionProblem

# Float32 (heads, rows) pointers among each kernel's tensors: q, k, v, do, lse, delta, outputs.
STATS = {"dq": (False,) * 4 + (True, True, False), "dkdv": (False,) * 4 + (True, True, False, False)}


def backward_tiles(head_dim: int):
    """Two consumer warpgroups of 64 rows: the four accumulators of a step fit in 240 registers."""
    from s2s.attention.cute.forward_sm90 import ForwardTiles

    return ForwardTiles(head_dim=head_dim, consumer_warpgroups=2, kv_stages=4)


def compile_backward(kind: str, dtype: torch.dtype, tiles):
    """Build the dQ (``kind="dq"``) or dK/dV (``"dkdv"``) kernel for one specialization."""
    from s2s.attention.cute.backward_dkdv_sm90 import ChunkAttentionBackwardDkDvSm90
    from s2s.attention.cute.backward_dq_sm90 import ChunkAttentionBackwardDqSm90

    kernel = (ChunkAttentionBackwardDqSm90 if kind == "dq" else ChunkAttentionBackwardDkDvSm90)(tiles)
    return compile_kernel(kernel, dtype, tiles.head_dim, STATS[kind])


@functools.cache
def compiled_backward(kind: str, dtype: torch.dtype, tiles):
    """One backward kernel per (kind, dtype, tile shape), in memory and in the disk cache."""
    from s2s.attention.cute.kernel_cache import load_or_build

    return load_or_build(
        specialization_name(f"bwd_{kind}", dtype, tiles), lambda: compile_backward(kind, dtype, tiles)
    )


def backward(
    problem: AttentionProblem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    table: torch.Tensor,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV in packed (total, H, D) form from what the forward kept: packed contiguous q,
    k, v, out, its LSE (Hq, total_q) and per-sequence table. Rows outside every sequence get
    zero gradients."""
    import cuda.bindings.driver as cuda

    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1).t().contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if problem.is_varlen:  # rows outside every sequence: no kernel writes them
        dq[rows_in_sequences(problem.cu_seqlens_q) :] = 0
        used_keys = rows_in_sequences(problem.cu_seqlens_k)
        dk[used_keys:] = 0
        dv[used_keys:] = 0
    tiles = backward_tiles(problem.head_dim)
    left = -1 if problem.chunks.left_chunks is None else problem.chunks.left_chunks
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    inputs, sizes, scale = [q, k, v, grad_out, lse, delta], sizes_of(q, k), problem.softmax_scale
    q_tiles = max(1, -(-problem.max_seqlen_q // tiles.tile_m))
    k_tiles = max(1, -(-problem.max_seqlen_k // tiles.tile_m))
    dq_kernel = compiled_backward("dq", problem.dtype, tiles)
    dq_kernel(*kernel_arguments([*inputs, dq], sizes, table, q_tiles, left, scale, stream))
    dkdv_kernel = compiled_backward("dkdv", problem.dtype, tiles)
    dkdv_kernel(*kernel_arguments([*inputs, dk, dv], sizes, table, k_tiles, left, scale, stream))
    return dq, dk, dv
