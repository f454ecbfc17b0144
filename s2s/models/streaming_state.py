"""What a duplex model carries from one streamed chunk to the next (ChunkedDuplexBase.step).

The model owns its streaming state as it owns its weights: the front end's convolution tails, every
attention layer's cache and each stream's position on the timeline. What surrounds the model (the
log-mel front end, the decoder's feedback and its sampling, the vocoder) is the session's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2s.attention import CrossAttentionCache, SelfAttentionCache
from s2s.attention.static_cache import StaticCrossAttentionCache, StaticSelfAttentionCache, StepPlan
from s2s.models.frontend import FrontEndState


@dataclass
class LayerCaches:
    """One cache per attention layer. The caches are written in place: a step keeps the objects."""

    encoder: list[SelfAttentionCache | StaticSelfAttentionCache]
    decoder: list[SelfAttentionCache | StaticSelfAttentionCache]
    cross: list[CrossAttentionCache | StaticCrossAttentionCache]

    def all(self) -> list:
        return [*self.encoder, *self.decoder, *self.cross]

    def _static(self) -> bool:
        caches = self.all()
        return bool(caches) and all(
            isinstance(c, (StaticSelfAttentionCache, StaticCrossAttentionCache)) for c in caches
        )

    def share_frames(self) -> None:
        """Point every static cache at the first one's frame counts (they are equal: the caches are
        built alike and every step and reset treats them alike), so a state carries one pair of
        counters rather than one per layer (what a CUDA graph copies back each replay)."""
        if not self._static():
            return
        first = self.all()[0]
        for cache in self.all()[1:]:
            cache.key_frames, cache.query_frames = first.key_frames, first.query_frames

    def step_plan(self, counts: torch.Tensor, rows: int, heads_q: int) -> StepPlan | None:
        """Static caches: the step's index math, made once for all of them (they are built alike
        and every step appends and attends the same counts on each; each checks the geometry).
        None for the packed engine's caches."""
        return self.all()[0].plan(counts, rows, heads_q) if self._static() else None


@dataclass
class DuplexState:
    front_end: FrontEndState
    caches: LayerCaches
    positions: torch.Tensor  # (B,) int64: model frames consumed per stream

    def reset(self, streams: torch.Tensor) -> DuplexState:
        """The selected streams (B,) bool back to a stream's start: fresh front-end tails and
        positions in a new state, the caches' rows reset in place (the same cache objects)."""
        for cache in self.caches.all():
            cache.reset(streams)
        self.caches.share_frames()
        return DuplexState(
            front_end=self.front_end.reset(streams),
            caches=self.caches,
            positions=torch.where(streams, 0, self.positions),
        )
