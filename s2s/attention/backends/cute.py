"""Our CuTe DSL kernel for Hopper: the fast path for inference and evaluation on sm_90.

Forward only for now: a call that needs gradients is left to the other backends (the CuTe
backward is issue #8), so ``auto`` picks flex for training and this kernel for inference.
"""

from __future__ import annotations

import importlib.util

import torch

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.problem import AttentionProblem


def _needs_grad(problem: AttentionProblem) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in (problem.q, problem.k, problem.v))


class CuteBackend(AttentionBackend):
    name = "cute"

    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        if importlib.util.find_spec("cutlass") is None:
            return "nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')"
        if _needs_grad(problem):
            return "the CuTe kernel has no backward pass yet; train with backend='flex' or 'auto'"
        from s2s.attention.cute.launch import unsupported_reason

        return unsupported_reason(problem)

    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from s2s.attention.cute.launch import forward

        out, lse = forward(problem)
        return out, (lse if return_lse else None)
