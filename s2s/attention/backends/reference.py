"""The test oracle: a dense boolean mask from the rule and float64 eager math.

Slow and memory-hungry on purpose: it shares nothing with the fast paths but the rule itself.
Packed batches, and batches with ``seqused_k``, run one sequence at a time, on its own keys only.
"""

from __future__ import annotations

import torch

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.mask import dense_mask
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


def _used_keys_attention(problem: AttentionProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched layout with ``seqused_k``: each sequence against its first ``seqused_k[b]`` keys
    only (sliced, so storage rows past them, NaN too, never enter the math). The oracle may read
    the lengths on the host, and checks them."""
    capacity = problem.k.shape[1]
    used = problem.seqused_k.tolist()
    bad = [(b, n) for b, n in enumerate(used) if not 0 <= n <= capacity]
    if bad:
        raise ValueError(
            f"seqused_k must lie in [0, Sk] = [0, {capacity}] for every sequence (as flash-attention), "
            f"got (sequence, value) {bad[:4]}"
        )
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
        out, lse = dense_attention(
            problem.q[one], problem.k[one, :n], problem.v[one, :n], mask, problem.softmax_scale
        )
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
        if problem.seqused_k is not None:
            out, lse = _used_keys_attention(problem)
            return out.to(problem.dtype), lse.to(lse_dtype)
        if not problem.is_varlen:
            mask = dense_mask(
                problem.chunks,
                problem.seqlens_q,
                problem.seqlens_k,
                problem.max_seqlen_q,
                problem.max_seqlen_k,
            )
            out, lse = dense_attention(problem.q, problem.k, problem.v, mask, problem.softmax_scale)
            return out.to(problem.dtype), lse.to(lse_dtype)

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
