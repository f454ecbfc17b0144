"""Decoder on the same timeline as the encoder: chunk-causal self-attention over its own past and
chunk-causal cross-attention over the encoder. Its input at frame t is what it produced at frame
t - C (the previous chunk), so all frames of a chunk are produced at once and none sees its target."""

from __future__ import annotations

import torch
from torch import nn

from s2s.attention import ChunkSpec, CrossAttentionCache, SelfAttentionCache
from s2s.models.attention import CrossAttention, SelfAttention
from s2s.models.config import DuplexConfig
from s2s.models.layers import FeedForward, Rotation, residual_stream
from s2s.models.packing import PackedLayout


class DecoderBlock(nn.Module):
    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.self_attention_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.self_attention = SelfAttention(config)
        self.cross_attention_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.cross_attention = CrossAttention(config)
        self.feed_forward_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.feed_forward = FeedForward(config.dim, int(config.mlp_ratio * config.dim), config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x,
        rotation: Rotation,
        encoded,
        spec: ChunkSpec,
        cross_spec: ChunkSpec,
        layout: PackedLayout | None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.self_attention_norm(x), rotation, spec, layout))
        x = x + self.dropout(self.cross_attention(self.cross_attention_norm(x), encoded, cross_spec, layout))
        return x + self.feed_forward(self.feed_forward_norm(x))

    def step(
        self,
        x,
        rotation: Rotation,
        self_cache: SelfAttentionCache,
        cross_cache: CrossAttentionCache,
        counts,
        final,
    ) -> torch.Tensor:
        x = x + self.self_attention.step(self.self_attention_norm(x), rotation, self_cache, counts, final)
        x = x + self.cross_attention.step(self.cross_attention_norm(x), cross_cache, counts, final)
        return x + self.feed_forward(self.feed_forward_norm(x))


class Decoder(nn.Module):
    # s2s.models.cuda_graphs.GraphedBlocks once use_cuda_graphs() is called: tried before the loop
    graphs = None

    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_layers))
        self.norm = nn.RMSNorm(config.dim, eps=1e-6)

    def forward(
        self,
        x,
        positions,
        encoded,
        spec: ChunkSpec,
        cross_spec: ChunkSpec,
        layout: PackedLayout | None = None,
    ) -> torch.Tensor:
        x = residual_stream(x, self.norm)
        if self.graphs is not None and cross_spec is spec:
            graphed = self.graphs(x, positions, spec, layout, encoded=encoded)
            if graphed is not None:
                return self.norm(graphed)
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        for block in self.blocks:
            x = block(x, rotation, encoded, spec, cross_spec, layout)
        return self.norm(x)

    def step(self, x, positions, self_caches, cross_caches, counts, final) -> torch.Tensor:
        x = residual_stream(x, self.norm)
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        for block, self_cache, cross_cache in zip(self.blocks, self_caches, cross_caches, strict=True):
            x = block.step(x, rotation, self_cache, cross_cache, counts, final)
        return self.norm(x)
