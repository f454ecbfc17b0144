"""Encoder over the user's stream: pre-norm transformer blocks with chunk-causal self-attention."""

from __future__ import annotations

import torch
from torch import nn

from s2s.attention import ChunkSpec, SelfAttentionCache
from s2s.models.attention import SelfAttention
from s2s.models.config import DuplexConfig
from s2s.models.layers import FeedForward, Rotation, residual_stream
from s2s.models.packing import PackedLayout


class EncoderBlock(nn.Module):
    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.attention = SelfAttention(config)
        self.feed_forward_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.feed_forward = FeedForward(config.dim, int(config.mlp_ratio * config.dim), config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rotation: Rotation, spec: ChunkSpec, layout: PackedLayout | None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), rotation, spec, layout))
        return x + self.feed_forward(self.feed_forward_norm(x))

    def step(self, x, rotation: Rotation, cache: SelfAttentionCache, counts, final) -> torch.Tensor:
        x = x + self.attention.step(self.attention_norm(x), rotation, cache, counts, final)
        return x + self.feed_forward(self.feed_forward_norm(x))


class Encoder(nn.Module):
    # s2s.models.cuda_graphs.GraphedBlocks once use_cuda_graphs() is called: tried before the loop
    graphs = None

    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.norm = nn.RMSNorm(config.dim, eps=1e-6)

    def forward(self, x, positions, spec: ChunkSpec, layout: PackedLayout | None = None) -> torch.Tensor:
        x = residual_stream(x, self.norm)
        graphed = None if self.graphs is None else self.graphs(x, positions, spec, layout)
        if graphed is not None:
            return self.norm(graphed)
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        for block in self.blocks:
            x = block(x, rotation, spec, layout)
        return self.norm(x)

    def step(self, x, positions, caches: list[SelfAttentionCache], counts, final) -> torch.Tensor:
        x = residual_stream(x, self.norm)
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block.step(x, rotation, cache, counts, final)
        return self.norm(x)
