"""Our CuTe DSL kernels for Hopper: the fast path on sm_90, forward and backward.

The forward kernel saves its LSE and per-sequence table; the backward runs from them
(``s2s.attention.cute.backward``): the fused kernel, or under
``torch.use_deterministic_algorithms(True)`` the deterministic two-kernel pair.

``seqused_q`` runs forward and backward: the kernels read each sequence's query length from the
table, skip the tiles past it and write none of its rows (the host allocates those as zeros and
-inf). The forward never uses those rows of q; the backward needs them FINITE in q and grad_out
(flash-attention's contract): its kernels read whole tiles, and a padding row enters dK = dS^T Q
and dV = P^T dO with P = dS = 0, where 0 x NaN is NaN. Nothing copies them to zero them: that
copy would cost a third of what skipping the rows saves.
"""

from __future__ import annotations

import importlib.util

import torch

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.problem import AttentionProblem


class _CuteAttention(torch.autograd.Function):
    """Autograd around the kernels; the LSE output carries no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, problem: AttentionProblem):
        from s2s.attention.cute.launch import prepare, problem_layout

        prepared = prepare(problem)
        prepared.launch()
        ctx.problem = problem
        ctx.save_for_backward(*prepared.inputs, prepared.out, prepared.lse, prepared.table)
        out, lse = problem_layout(problem, prepared.out, prepared.lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        from s2s.attention.cute.backward import backward

        q, k, v, out, lse, table = ctx.saved_tensors
        problem = ctx.problem
        dq, dk, dv = backward(problem, q, k, v, out, lse, table, grad_out.reshape(out.shape))
        return dq.view(problem.q.shape), dk.view(problem.k.shape), dv.view(problem.v.shape), None


class CuteBackend(AttentionBackend):
    name = "cute"

    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        inputs = (problem.q, problem.k, problem.v)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        if problem.seqused_k is not None and needs_grad:
            # The forward takes it: keys past seqused_k are masked by select, and the last key
            # tile's V rows past it are zeroed in shared memory before P @ V, so NaN storage never
            # reaches the output (0 x NaN would). The dK/dV kernels leave those rows unwritten.
            return "the CuTe backward does not take seqused_k (run the step under torch.no_grad())"
        # seqused_q is taken forward and backward (see the module's docstring).
        if (reason := _dsl_missing()) is not None:
            return reason
        from s2s.attention.cute.launch import unsupported_reason

        return unsupported_reason(problem)

    @staticmethod
    def device_unsupported_reason(device: torch.device) -> str | None:
        """Why no call on ``device`` can run here (the DSL missing, not a Hopper GPU); None when
        some can. For callers that choose a path before they have a problem (packed rows)."""
        if (reason := _dsl_missing()) is not None:
            return reason
        from s2s.attention.cute.launch import device_unsupported_reason

        return device_unsupported_reason(device)

    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, lse = _CuteAttention.apply(problem.q, problem.k, problem.v, problem)
        return out, (lse if return_lse else None)


def _dsl_missing() -> str | None:
    if importlib.util.find_spec("cutlass") is None:
        return "nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')"
    return None
