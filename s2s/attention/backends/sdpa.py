"""PyTorch scaled_dot_product_attention with a boolean mask: CPU and GPU, forward and backward.

It materializes the (Sq, Sk) mask, so it suits short sequences and streaming steps. A packed
batch runs as one sequence under a block-diagonal mask. With ``seqused_k`` the unused key rows
are also zeroed (the mask alone lets NaN through: SDPA adds -inf to a NaN score, and multiplies
a zero probability by a NaN value row). With ``seqused_q`` the rows past it are hidden by the
mask (so their output is zeroed as any row that sees no key, which also zeroes their incoming
gradient) and zeroed in q (their dS = 0 meets Q in dK, and 0 x NaN is NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.mask import dense_mask, packed_dense_mask
from s2s.attention.problem import AttentionProblem


def problem_mask(problem: AttentionProblem) -> torch.Tensor:
    """(B, Sq, Sk) boolean mask of the call, in the tensors' own (padded, packed) extent."""
    if not problem.is_varlen:
        return dense_mask(
            problem.chunks, problem.seqlens_q, problem.seqlens_k, problem.max_seqlen_q, problem.max_seqlen_k
        )
    packed = packed_dense_mask(
        problem.chunks, problem.cu_seqlens_q, problem.cu_seqlens_k, problem.rows_q, problem.rows_k
    )
    total_q, total_k = problem.q.shape[0], problem.k.shape[0]
    padded = packed.new_zeros((1, total_q, total_k))
    padded[0, : packed.shape[0], : packed.shape[1]] = packed
    return padded


class SdpaBackend(AttentionBackend):
    name = "sdpa"

    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        if return_lse:
            return "scaled_dot_product_attention does not return the log-sum-exp"
        return None

    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, (k, v) = problem.used_queries(), problem.used_keys_and_values()
        if problem.is_varlen:
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        mask = problem_mask(problem)
        empty_rows = ~mask.any(-1)
        # A row with no visible key would turn softmax into NaN, in the output and in the
        # gradients of every key. Let it see key 0, then zero its output.
        mask[..., 0] |= empty_rows
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask.unsqueeze(1),
            scale=problem.softmax_scale,
            enable_gqa=problem.heads_q != problem.heads_k,
        ).transpose(1, 2)
        out = torch.where(empty_rows[..., None, None], torch.zeros_like(out), out)
        return (out[0] if problem.is_varlen else out), None
