"""How an attention layer's call is served: one object per call, so each layer has one code path.

A layer projects its new frames to q, k, v and hands them to its context. Offline
(`OfflineAttention`) the frames are whole sequences and the context runs chunk attention under the
pass's spec and packing layout. Streaming (`CachedSelfAttention`, `CachedCrossAttention`) the frames
are one chunk of every stream and the context adds k, v to the layer's cache and attends q to what
it holds (`counts` real frames per stream, `final` on a stream's last step). Both see the same keys,
which is why a stream equals the offline pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from s2s.attention import ChunkSpec, CrossAttentionCache, SelfAttentionCache
from s2s.attention.static_cache import StaticCrossAttentionCache, StaticSelfAttentionCache, StepPlan
from s2s.models import attention as layers
from s2s.models.packing import AlignedLayout, PackedLayout


@dataclass(frozen=True, eq=False)
class OfflineAttention:
    """A whole-sequence pass: chunk attention under `spec` over the padded batch whose valid frames
    are `layout`'s (None: all), through `backend`. One serves every layer of a pass."""

    spec: ChunkSpec
    layout: PackedLayout | AlignedLayout | None
    backend: str

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # looked up on the module at each call: the training FLOP counter wraps that name
        # (s2s.training.step_profile.count_attention_flops)
        return layers.attend(q, k, v, self.spec, self.layout, self.backend)


@dataclass(frozen=True, eq=False)
class CachedSelfAttention:
    """One layer's streaming self-attention: the chunk's k, v join the cache, q attends to it."""

    cache: SelfAttentionCache | StaticSelfAttentionCache
    counts: torch.Tensor  # (B,) int64 real frames per stream (0: idle)
    final: torch.Tensor  # (B,) bool: a stream's last step
    plan: StepPlan | None = None  # static caches: the step's index math, shared by the model's caches

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        planned = {} if self.plan is None else {"plan": self.plan}
        return self.cache.step(q, k, v, lengths=self.counts, final=self.final, **planned)


@dataclass(frozen=True, eq=False)
class CachedCrossAttention:
    """One decoder layer's streaming cross-attention: the encoder chunk's k, v join the cache, then
    the decoder chunk's q attends to the encoder frames held (its own chunk and earlier ones)."""

    cache: CrossAttentionCache | StaticCrossAttentionCache
    counts: torch.Tensor
    final: torch.Tensor
    plan: StepPlan | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        planned = {} if self.plan is None else {"plan": self.plan}
        self.cache.append(k, v, lengths=self.counts, final=self.final, **planned)
        return self.cache.attend(q, lengths=self.counts, final=self.final, **planned)


AttentionContext = OfflineAttention | CachedSelfAttention | CachedCrossAttention
StackContexts = OfflineAttention | Sequence[CachedSelfAttention] | Sequence[CachedCrossAttention]


def per_layer(contexts: StackContexts, layers: int) -> Sequence[AttentionContext]:
    """A stack's contexts, one per layer: an offline context serves every layer, streaming ones
    are given per layer (each layer has its own cache)."""
    if isinstance(contexts, OfflineAttention):
        return [contexts] * layers
    if len(contexts) != layers:
        raise ValueError(f"a stack of {layers} layers needs {layers} streaming contexts, got {len(contexts)}")
    return contexts


def streaming(contexts: StackContexts) -> bool:
    """Whether a stack call streams. Streaming runs the blocks' forward eagerly: compiled blocks
    (s2s.models.regional_compile) serve whole passes, and a cache's Python state would become guards
    (a deep copy of a compiled block would even run the original's weights)."""
    return not isinstance(contexts, OfflineAttention)
