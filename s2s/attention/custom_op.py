"""Chunk attention as a registered PyTorch operator: what `torch.compile` sees of one call.

Dynamo cannot trace a CuTe kernel launch (raw device pointers into a DSL-compiled function), so
without this every attention call splits a compiled block in two, and the host pays the compiled
graphs' wrappers and guards at each split (docs/benchmarks.md, "Regional compilation"). Registered
with a shape-only fake and its own backward, the call is one opaque node: a block compiles into one
graph with attention inside, and a CUDA graph can capture the compiled block whole.

The operator takes the padded layout (B, T, H, D) with the chunk rule as per-sequence device
tensors, as the graphed block stacks pass it (s2s.models.cuda_graphs), with the used query rows per
sequence (`seqused_q`: padded query rows are never computed), or packed rows with device offsets
and host bounds: nothing in it reads the device on the host. Forward: `chunk_attention` with its
LSE. Backward: the CuTe kernels where the forward ran on them, otherwise the dense float64 formula
from the LSE (`dense_attention_backward`, memory grows with T^2: the CPU and test path).
"""

from __future__ import annotations

import torch

from s2s.attention.api import chunk_attention, select_backend
from s2s.attention.backends.reference import dense_attention_backward
from s2s.attention.mask import dense_mask, packed_dense_mask
from s2s.attention.problem import AttentionProblem, make_problem
from s2s.attention.spec import ChunkSpec, SequenceChunks

# Backends the operator runs (they return the LSE its backward needs). "sdpa" and "flex" calls
# are left to the compiler to trace as they are.
OPERATOR_BACKENDS = ("auto", "cute", "reference")


def _spec(chunk_q, chunk_k, q_offset, k_offset, left_chunks: int | None) -> ChunkSpec:
    return ChunkSpec.from_resolved(SequenceChunks(chunk_q, chunk_k, q_offset, k_offset, left_chunks))


def _check_backend(backend: str) -> None:
    if backend not in OPERATOR_BACKENDS:
        raise ValueError(
            f"the s2s::chunk_attention operator runs backends {OPERATOR_BACKENDS}, got {backend!r}; "
            "call chunk_attention for the others"
        )


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.custom_op("s2s::chunk_attention", mutates_args=())
def chunk_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_q: torch.Tensor,
    chunk_k: torch.Tensor,
    q_offset: torch.Tensor,
    k_offset: torch.Tensor,
    left_chunks: int | None,
    softmax_scale: float | None,
    backend: str,
    seqused_q: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, Sq, Hq, D) and LSE (B, Hq, Sq) of q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) under the
    chunk rule given per sequence as int64 device tensors (B,) (a resolved ChunkSpec); with
    `seqused_q` (B,) int32, sequence b's query rows from seqused_q[b] on are not attended (zeros,
    LSE -inf, no gradient; chunk_attention's contract). Packed: q (total_q, Hq, D), k/v
    (total_k, Hk, D) with int32 `cu_seqlens_q` / `cu_seqlens_k` and host bounds `max_seqlen_q` /
    `max_seqlen_k` (the offsets are not read on the host); LSE (Hq, total_q)."""
    _check_backend(backend)
    spec = _spec(chunk_q, chunk_k, q_offset, k_offset, left_chunks)
    out, lse = chunk_attention(
        q, k, v, spec, backend=backend, softmax_scale=softmax_scale, return_lse=True,
        **_layout_arguments(seqused_q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k),
    )  # fmt: skip
    return out.contiguous(), lse.contiguous()


def _layout_arguments(seqused_q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> dict:
    """chunk_attention's keyword arguments for the operator's optional layout inputs."""
    if cu_seqlens_q is None:
        return {"seqused_q": seqused_q}
    return {
        "seqused_q": seqused_q,
        "cu_seqlens_q": cu_seqlens_q,
        "cu_seqlens_k": cu_seqlens_k,
        "max_seqlen_q": max_seqlen_q,
        "max_seqlen_k": max_seqlen_k,
    }


@chunk_attention_op.register_fake
def _(
    q, k, v, chunk_q, chunk_k, q_offset, k_offset, left_chunks, softmax_scale, backend, seqused_q=None,
    cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
):  # fmt: skip
    _check_backend(backend)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if cu_seqlens_q is not None:  # packed: (Hq, total_q)
        return out, q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q))
    batch, seqlen_q, heads_q, _ = q.shape
    return out, q.new_empty((batch, heads_q, seqlen_q), dtype=_lse_dtype(q))


@torch.library.custom_op("s2s::chunk_attention_backward", mutates_args=())
def chunk_attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    chunk_q: torch.Tensor,
    chunk_k: torch.Tensor,
    q_offset: torch.Tensor,
    k_offset: torch.Tensor,
    left_chunks: int | None,
    softmax_scale: float | None,
    backend: str,
    seqused_q: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of `chunk_attention_op` from its output and LSE."""
    spec = _spec(chunk_q, chunk_k, q_offset, k_offset, left_chunks)
    layout = _layout_arguments(seqused_q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    problem = make_problem(q, k, v, spec, softmax_scale=softmax_scale, **layout)
    if q.numel() and k.numel() and select_backend(problem, backend, return_lse=True).name == "cute":
        return _cute_gradients(problem, out, lse, grad_out)
    if problem.is_varlen:  # the dense formula on one row of frames, block-diagonal mask (CPU, tests)
        mask = packed_dense_mask(problem.chunks, cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
        rows = (t.unsqueeze(0) for t in (q, k, v, out, lse, grad_out))
        grads = dense_attention_backward(*rows, mask[None], problem.softmax_scale)
        return tuple(g[0].contiguous() for g in grads)
    if seqused_q is not None:  # unused rows may hold NaN: 0 x NaN would reach dK and dV
        used = problem.used_query_rows()
        q, grad_out = torch.where(used, q, 0), torch.where(used, grad_out, 0)
    mask = dense_mask(problem.chunks, problem.seqlens_q, problem.seqlens_k, q.shape[1], k.shape[1])
    grads = dense_attention_backward(q, k, v, out, lse, grad_out, mask, problem.softmax_scale)
    return tuple(g.contiguous() for g in grads)


@chunk_attention_backward_op.register_fake
def _(
    grad_out, q, k, v, out, lse, chunk_q, chunk_k, q_offset, k_offset, left_chunks, softmax_scale, backend,
    seqused_q=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
):  # fmt: skip
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _cute_gradients(
    problem: AttentionProblem, out: torch.Tensor, lse: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CuTe backward on packed rows: a padded batch's (B*S, H, D) inputs and LSE (H, B*S), or
    packed inputs as they are."""
    from s2s.attention.cute.backward import backward
    from s2s.attention.cute.launch import sequence_table

    def rows(t: torch.Tensor) -> torch.Tensor:
        if problem.is_varlen:
            return t.contiguous()
        return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:]).contiguous()

    if problem.is_varlen:
        lse_rows = lse.contiguous()
    else:
        lse_rows = lse.permute(1, 0, 2).reshape(lse.shape[1], -1).contiguous()
    dq, dk, dv = backward(
        problem,
        rows(problem.q),
        rows(problem.k),
        rows(problem.v),
        rows(out),
        lse_rows,
        sequence_table(problem),
        rows(grad_out),
    )
    return dq.view(problem.q.shape), dk.view(problem.k.shape), dv.view(problem.v.shape)


def _setup_context(ctx, inputs, output) -> None:
    (q, k, v, chunk_q, chunk_k, q_offset, k_offset, left_chunks, softmax_scale, backend, seqused_q,
     cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) = inputs  # fmt: skip
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(
        q, k, v, out, lse, chunk_q, chunk_k, q_offset, k_offset, seqused_q, cu_seqlens_q, cu_seqlens_k
    )
    ctx.left_chunks, ctx.softmax_scale, ctx.backend = left_chunks, softmax_scale, backend
    ctx.max_seqlens = (max_seqlen_q, max_seqlen_k)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, *chunks, seqused_q, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grads = chunk_attention_backward_op(
        grad_out, q, k, v, out, lse, *chunks, ctx.left_chunks, ctx.softmax_scale, ctx.backend, seqused_q,
        cu_seqlens_q, cu_seqlens_k, *ctx.max_seqlens,
    )  # fmt: skip
    return (*grads, *[None] * 12)


chunk_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention_operator(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: ChunkSpec,
    backend: str,
    seqused_q: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
) -> torch.Tensor:
    """`chunk_attention(q, k, v, spec, ...)` through the operator, for a spec made from resolved
    device values (`ChunkSpec.from_resolved`, whose fields are the per-sequence tensors): a padded
    batch (with `seqused_q`), or packed rows with device offsets and host bounds."""
    out, _ = chunk_attention_op(
        q, k, v, spec.chunk_q, spec.effective_chunk_k, spec.q_offset, spec.k_offset, spec.left_chunks,
        None, backend, seqused_q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
    )  # fmt: skip
    return out
