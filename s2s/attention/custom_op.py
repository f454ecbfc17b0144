"""Chunk attention as a registered PyTorch operator: what `torch.compile` sees of one call.

Dynamo cannot trace a CuTe kernel launch (raw device pointers into a DSL-compiled function), so
without this every attention call splits a compiled block in two, and the host pays the compiled
graphs' wrappers and guards at each split (docs/benchmarks.md, "Regional compilation"). Registered
with a shape-only fake and its own backward, the call is one opaque node: a block compiles into one
graph with attention inside, and a CUDA graph can capture the compiled block whole.

The operator takes the padded layout (B, T, H, D) with the chunk rule as per-sequence device
tensors, as the graphed block stacks pass it (s2s.models.cuda_graphs): nothing in it reads the
device on the host. Forward: `chunk_attention` with its LSE. Backward: the CuTe kernels where the
forward ran on them, otherwise the dense float64 formula from the LSE
(`dense_attention_backward`, memory grows with T^2: the CPU and test path).
"""

from __future__ import annotations

import torch

from s2s.attention.api import chunk_attention, select_backend
from s2s.attention.backends.reference import dense_attention_backward
from s2s.attention.mask import dense_mask
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, Sq, Hq, D) and LSE (B, Hq, Sq) of q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) under the
    chunk rule given per sequence as int64 device tensors (B,) (a resolved ChunkSpec)."""
    _check_backend(backend)
    spec = _spec(chunk_q, chunk_k, q_offset, k_offset, left_chunks)
    out, lse = chunk_attention(q, k, v, spec, backend=backend, softmax_scale=softmax_scale, return_lse=True)
    return out.contiguous(), lse.contiguous()


@chunk_attention_op.register_fake
def _(q, k, v, chunk_q, chunk_k, q_offset, k_offset, left_chunks, softmax_scale, backend):
    _check_backend(backend)
    batch, seqlen_q, heads_q, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (batch, heads_q, seqlen_q), dtype=_lse_dtype(q)
    )


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of `chunk_attention_op` from its output and LSE."""
    spec = _spec(chunk_q, chunk_k, q_offset, k_offset, left_chunks)
    problem = make_problem(q, k, v, spec, softmax_scale=softmax_scale)
    if q.numel() and k.numel() and select_backend(problem, backend, return_lse=True).name == "cute":
        return _cute_gradients(problem, out, lse, grad_out)
    mask = dense_mask(problem.chunks, problem.seqlens_q, problem.seqlens_k, q.shape[1], k.shape[1])
    grads = dense_attention_backward(q, k, v, out, lse, grad_out, mask, problem.softmax_scale)
    return tuple(g.contiguous() for g in grads)


@chunk_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, chunk_q, chunk_k, q_offset, k_offset, left_chunks, softmax_scale, backend):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _cute_gradients(
    problem: AttentionProblem, out: torch.Tensor, lse: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CuTe backward on the padded batch seen as packed rows: (B*S, H, D) inputs, LSE (H, B*S)."""
    from s2s.attention.cute.backward import backward
    from s2s.attention.cute.launch import sequence_table

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:]).contiguous()

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
    q, k, v, chunk_q, chunk_k, q_offset, k_offset, left_chunks, softmax_scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, chunk_q, chunk_k, q_offset, k_offset)
    ctx.left_chunks, ctx.softmax_scale, ctx.backend = left_chunks, softmax_scale, backend


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, *chunks = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grads = chunk_attention_backward_op(
        grad_out, q, k, v, out, lse, *chunks, ctx.left_chunks, ctx.softmax_scale, ctx.backend
    )
    return (*grads, None, None, None, None, None, None, None)


chunk_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention_operator(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: ChunkSpec, backend: str
) -> torch.Tensor:
    """`chunk_attention(q, k, v, spec)` through the operator, for a spec made from resolved device
    values (`ChunkSpec.from_resolved`, whose fields are the per-sequence tensors)."""
    out, _ = chunk_attention_op(
        q, k, v, spec.chunk_q, spec.effective_chunk_k, spec.q_offset, spec.k_offset, spec.left_chunks,
        None, backend,
    )  # fmt: skip
    return out
