"""The test oracle: a dense boolean mask from the rule and float64 eager math.

Slow and memory-hungry on purpose: it shares nothing with the fast paths but the rule itself.
Packed batches run one sequence at a time.
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


def _slice_chunks(chunks: SequenceChunks, index: int) -> SequenceChunks:
    one = slice(index, index + 1)
    return SequenceChunks(
        chunks.chunk_q[one],
        chunks.chunk_k[one],
        chunks.q_offset[one],
        chunks.k_offset[one],
        chunks.left_chunks,
    )


class ReferenceBackend(AttentionBackend):
    name = "reference"

    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        return None

    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lse_dtype = torch.float64 if problem.dtype == torch.float64 else torch.float32
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
