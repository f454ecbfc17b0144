"""The backward pass on the CuTe kernels: delta = rowsum(dO * O), then the dQ kernel (query tiles
walk their key tiles) and the dK/dV kernel (key tiles walk the query tiles that see them).

Both kernels own their output rows, so gradients are deterministic: bit-identical on repeat.
"""

from __future__ import annotations

import functools

import torch

from s2s.attention.cute.launch import _cute_dtype, sequence_table
from s2s.attention.problem import AttentionProblem

BACKWARD_QUERY_TILE = 64  # rows of Q/dO per step of the dK/dV kernel (backward_dkdv_sm90.QUERY_TILE)


def backward_tiles(head_dim: int):
    """Two consumer warpgroups of 64 rows: the four accumulators of a step fit in 240 registers."""
    from s2s.attention.cute.forward_sm90 import ForwardTiles

    return ForwardTiles(head_dim=head_dim, consumer_warpgroups=2, kv_stages=4)


def _pointer(t: torch.Tensor, dtype):
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    if t.data_ptr() % 16:
        raise ValueError("the CuTe kernels need 16-byte aligned tensors; pass a fresh .contiguous() copy")
    return make_ptr(dtype, t.data_ptr(), cute.AddressSpace.gmem, assumed_align=16)


def _arguments(kind: str, tensors: dict, table: torch.Tensor, tiles: int, left: int, scale: float, stream):
    """Pointers and sizes in the order of the kernel's ``__call__``."""
    import cutlass

    q, k = tensors["q"], tensors["k"]
    element = _cute_dtype(q.dtype)
    names = (
        ("q", "k", "v", "do", "lse", "delta", "dq")
        if kind == "dq"
        else ("q", "k", "v", "do", "lse", "delta", "dk", "dv")
    )
    pointers = [_pointer(tensors[n], cutlass.Float32 if n in ("lse", "delta") else element) for n in names]
    return (
        *pointers,
        _pointer(table, cutlass.Int32),
        cutlass.Int32(q.shape[0]),
        cutlass.Int32(k.shape[0]),
        cutlass.Int32(q.shape[1]),
        cutlass.Int32(k.shape[1]),
        cutlass.Int32(table.shape[0]),
        cutlass.Int32(tiles),
        cutlass.Int32(left),
        cutlass.Float32(scale),
        stream,
    )


def _fake_tensors(dtype: torch.dtype, head_dim: int) -> dict:
    rows, heads = 256, 2
    fake = torch.empty(rows, heads, head_dim, dtype=dtype)
    stats = torch.empty(heads, rows, dtype=torch.float32)
    names = ("q", "k", "v", "do", "dq", "dk", "dv")
    return {**dict.fromkeys(names, fake), "lse": stats, "delta": stats}


def compile_backward(kind: str, dtype: torch.dtype, tiles):
    """Build the dQ (``kind="dq"``) or dK/dV (``"dkdv"``) kernel for one specialization."""
    import cuda.bindings.driver as cuda
    import cutlass.cute as cute

    from s2s.attention.cute.backward_dkdv_sm90 import ChunkAttentionBackwardDkDvSm90
    from s2s.attention.cute.backward_dq_sm90 import ChunkAttentionBackwardDqSm90

    kernel = (ChunkAttentionBackwardDqSm90 if kind == "dq" else ChunkAttentionBackwardDkDvSm90)(tiles)
    table = torch.zeros(1, 8, dtype=torch.int32)
    arguments = _arguments(kind, _fake_tensors(dtype, tiles.head_dim), table, 1, -1, 1.0, cuda.CUstream(0))
    return cute.compile(kernel, *arguments)


@functools.cache
def compiled_backward(kind: str, dtype: torch.dtype, tiles):
    """One backward kernel per (kind, dtype, tile shape), in memory and in the disk cache."""
    from s2s.attention.cute.kernel_cache import load_or_build

    name = (
        f"bwd_{kind}_sm90_{str(dtype).removeprefix('torch.')}_d{tiles.head_dim}"
        f"_wg{tiles.consumer_warpgroups}_n{tiles.tile_n}_s{tiles.kv_stages}"
    )
    return load_or_build(name, lambda: compile_backward(kind, dtype, tiles))


def backward(
    problem: AttentionProblem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV in packed (total, H, D) form from packed contiguous q, k, v, out, grad_out and
    the forward's LSE (Hq, total_q). Rows outside every sequence get zero gradients."""
    import cuda.bindings.driver as cuda

    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1).t().contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if problem.is_varlen:
        dq[int(problem.cu_seqlens_q[-1]) :] = 0
        dk[int(problem.cu_seqlens_k[-1]) :] = 0
        dv[int(problem.cu_seqlens_k[-1]) :] = 0
    table = sequence_table(problem)
    tiles = backward_tiles(problem.head_dim)
    left = -1 if problem.chunks.left_chunks is None else problem.chunks.left_chunks
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    tensors = {
        "q": q,
        "k": k,
        "v": v,
        "do": grad_out,
        "lse": lse,
        "delta": delta,
        "dq": dq,
        "dk": dk,
        "dv": dv,
    }
    q_tiles = max(1, -(-problem.max_seqlen_q // tiles.tile_m))
    k_tiles = max(1, -(-problem.max_seqlen_k // tiles.tile_m))
    scale = problem.softmax_scale
    compiled_backward("dq", problem.dtype, tiles)(
        *_arguments("dq", tensors, table, q_tiles, left, scale, stream)
    )
    compiled_backward("dkdv", problem.dtype, tiles)(
        *_arguments("dkdv", tensors, table, k_tiles, left, scale, stream)
    )
    return dq, dk, dv
