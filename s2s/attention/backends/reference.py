"""The test oracle: a dense boolean mask from the rule and float64 eager math.

Slow and memory-hungry on purpose: it shares nothing with the fast paths but the rule itself.
Packed batches, and batches with ``seqused_k``, run one sequence at a time, on its own keys only.
With ``seqused_q`` the rows past it are hidden by the mask, and zeroed in q and in the output's
gradient (``torch.where``), so NaN there reaches no output and no gradient.
"""

from __future__ import annotations

import torch

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.mask import dense_mask, packed_dense_mask
from s2s.attention.problem import AttentionProblem
from s2s.attention.spec import SequenceChunks


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax attention in float64. q (B, Sq, Hq, D), k/v (B, Sk, Hk, D), mask
    (B, Sq, Sk). Rows with no visible key give zeros and LSE -inf, without NaN in any gradient."""
    group = q.shape[2] // k.shape[2]
    q64, k64, v64 = (t.to(torch.float64).transpose(1, 2) for t in (q, k, v))
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v64.repeat_interleave(group, dim=1)
    scores = torch.matmul(q64, k64.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - finite_lse.unsqueeze(-1))
    out = torch.matmul(probs, v64).transpose(1, 2)
    return out, lse


def dense_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of ``dense_attention`` from its output and LSE (B, Hq, Sq), in float64 and cast
    to the inputs' dtypes: the flash-attention backward written out densely (P from the LSE,
    dS = P (dP - rowsum(dO O))), for callers that run the forward outside autograd."""
    batch, _, heads_q, _ = q.shape
    heads_k = k.shape[2]
    group = heads_q // heads_k
    q64, k64, v64, o64, do64 = (t.to(torch.float64).transpose(1, 2) for t in (q, k, v, out, grad_out))
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v64.repeat_interleave(group, dim=1)
    scores = torch.matmul(q64, k64.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    lse64 = lse.to(torch.float64)
    finite_lse = torch.where(torch.isinf(lse64), torch.zeros_like(lse64), lse64)
    probs = torch.exp(scores - finite_lse.unsqueeze(-1))
    grad_v = torch.matmul(probs.transpose(-1, -2), do64)
    grad_probs = torch.matmul(do64, v64.transpose(-1, -2))
    delta = (do64 * o64).sum(dim=-1, keepdim=True)
    grad_scores = probs * (grad_probs - delta) * scale
    grad_q = torch.matmul(grad_scores, k64)
    grad_k = torch.matmul(grad_scores.transpose(-1, -2), q64)

    def per_kv_head(t: torch.Tensor) -> torch.Tensor:
        """Sum the query heads of each K/V head (the group repeat_interleave made)."""
        return t.view(batch, heads_k, group, *t.shape[2:]).sum(dim=2)

    return (
        grad_q.transpose(1, 2).to(q.dtype),
        per_kv_head(grad_k).transpose(1, 2).to(k.dtype),
        per_kv_head(grad_v).transpose(1, 2).to(v.dtype),
    )


def _slice_chunks(chunks: SequenceChunks, index: int) -> SequenceChunks:
    one = slice(index, index + 1)
    return SequenceChunks(
        chunks.chunk_q[one],
        chunks.chunk_k[one],
        chunks.q_offset[one],
        chunks.k_offset[one],
        chunks.left_chunks,
    )


def _check_used_lengths(name: str, used: torch.Tensor, capacity: int) -> list[int]:
    """``seqused_q`` or ``seqused_k`` read on the host (the oracle may) and checked against the
    capacity (Sq or Sk)."""
    values = used.tolist()
    bad = [(b, n) for b, n in enumerate(values) if not 0 <= n <= capacity]
    if bad:
        extent = "Sq" if name == "seqused_q" else "Sk"
        raise ValueError(
            f"{name} must lie in [0, {extent}] = [0, {capacity}] for every sequence (as flash-attention), "
            f"got (sequence, value) {bad[:4]}"
        )
    return values


def _used_keys_attention(problem: AttentionProblem, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched layout with ``seqused_k``: each sequence against its first ``seqused_k[b]`` keys
    only (sliced, so storage rows past them, NaN too, never enter the math)."""
    used = _check_used_lengths("seqused_k", problem.seqused_k, problem.k.shape[1])
    outs, lses = [], []
    for b, n in enumerate(used):
        mask = dense_mask(
            _slice_chunks(problem.chunks, b),
            problem.seqlens_q[b : b + 1],
            problem.seqlens_k[b : b + 1],
            problem.max_seqlen_q,
            n,
        )
        one = slice(b, b + 1)
        k, v = problem.k[one, :n], problem.v[one, :n]
        out, lse = dense_attention(q[one], k, v, mask, problem.softmax_scale)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


class ReferenceBackend(AttentionBackend):
    name = "reference"

    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        return None

    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lse_dtype = torch.float64 if problem.dtype == torch.float64 else torch.float32
        if not problem.is_varlen:
            if problem.seqused_q is not None:
                _check_used_lengths("seqused_q", problem.seqused_q, problem.q.shape[1])
            q = problem.used_queries()
            if problem.seqused_k is not None:
                out, lse = _used_keys_attention(problem, q)
            else:
                mask = dense_mask(
                    problem.chunks,
                    problem.seqlens_q,
                    problem.seqlens_k,
                    problem.max_seqlen_q,
                    problem.max_seqlen_k,
                )
                out, lse = dense_attention(q, problem.k, problem.v, mask, problem.softmax_scale)
            return problem.zero_unused_query_rows(out.to(problem.dtype)), lse.to(lse_dtype)

        if problem.offsets_q is None:  # trusted device offsets: nothing read on the host
            mask = packed_dense_mask(
                problem.chunks, problem.cu_seqlens_q, problem.cu_seqlens_k, problem.rows_q, problem.rows_k
            )
            rows = (t.unsqueeze(0) for t in (problem.q, problem.k, problem.v))
            out, lse = dense_attention(*rows, mask.unsqueeze(0), problem.softmax_scale)
            return out[0].to(problem.dtype), lse[0].to(lse_dtype)
        cu_q, cu_k = problem.offsets_q, problem.offsets_k
        outs, lses = [], []
        for b in range(problem.batch):
            q = problem.q[cu_q[b] : cu_q[b + 1]].unsqueeze(0)
            k = problem.k[cu_k[b] : cu_k[b + 1]].unsqueeze(0)
            v = problem.v[cu_k[b] : cu_k[b + 1]].unsqueeze(0)
            mask = dense_mask(
                _slice_chunks(problem.chunks, b),
                problem.seqlens_q[b : b + 1],
                problem.seqlens_k[b : b + 1],
                cu_q[b + 1] - cu_q[b],
                cu_k[b + 1] - cu_k[b],
            )
            out, lse = dense_attention(q, k, v, mask, problem.softmax_scale)
            outs.append(out[0])
            lses.append(lse[0])
        rows_left = problem.q.shape[0] - cu_q[-1]
        outs.append(problem.q.new_zeros((rows_left, problem.heads_q, problem.head_dim), dtype=torch.float64))
        lses.append(
            torch.full(
                (problem.heads_q, rows_left), float("-inf"), dtype=torch.float64, device=problem.device
            )
        )
        return torch.cat(outs).to(problem.dtype), torch.cat(lses, dim=1).to(lse_dtype)
