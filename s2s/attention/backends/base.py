"""What a backend is: a name, a statement of what it cannot do, and a forward pass."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from s2s.attention.problem import AttentionProblem


class AttentionBackend(ABC):
    """A way to compute chunk-causal attention. Backward comes from autograd through
    ``forward`` unless the backend says it has none (``unsupported_reason``)."""

    name: str

    @abstractmethod
    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        """None when this backend can run the call, else why not (one short clause)."""

    @abstractmethod
    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output in q's layout and, when asked, LSE: (B, Hq, Sq) batched, (Hq, total_q) packed."""
