"""Chunk-causal attention: the mask spec, its backends, the single entry point and KV caches."""

from s2s.attention.api import chunk_attention
from s2s.attention.cache import CrossAttentionCache, SelfAttentionCache
from s2s.attention.mask import FULL, HIDDEN, PARTIAL, TileSchedule
from s2s.attention.spec import ChunkSpec

__all__ = [
    "FULL",
    "HIDDEN",
    "PARTIAL",
    "ChunkSpec",
    "CrossAttentionCache",
    "SelfAttentionCache",
    "TileSchedule",
    "chunk_attention",
]
