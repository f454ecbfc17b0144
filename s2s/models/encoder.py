"""Encoder over the user's stream: pre-norm transformer blocks with chunk-causal self-attention."""

from __future__ import annotations

import torch
from torch import nn

from s2s.models.attention import SelfAttention
from s2s.models.attention_context import AttentionContext, StackContexts, per_layer, streaming
from s2s.models.config import DuplexConfig
from s2s.models.layers import FeedForward, Rotation, residual_stream


class EncoderBlock(nn.Module):
    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.attention = SelfAttention(config)
        self.feed_forward_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.feed_forward = FeedForward(config.dim, int(config.mlp_ratio * config.dim), config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rotation: Rotation, context: AttentionContext) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), rotation, context))
        return x + self.feed_forward(self.feed_forward_norm(x))


class Encoder(nn.Module):
    # s2s.models.cuda_graphs.GraphedBlocks once use_cuda_graphs() is called: tried before the loop
    graphs = None

    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.norm = nn.RMSNorm(config.dim, eps=1e-6)

    def forward(self, x, positions, contexts: StackContexts) -> torch.Tensor:
        """x (B, n, dim) at absolute `positions` (B, n); `contexts`: one OfflineAttention for a whole
        pass, or one CachedSelfAttention per layer for a streaming chunk."""
        x = residual_stream(x, self.norm)
        streams = streaming(contexts)
        if self.graphs is not None and not streams:
            graphed = self.graphs(x, positions, contexts.spec, contexts.layout)
            if graphed is not None:
                return self.norm(graphed)
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        run = EncoderBlock.forward if streams else EncoderBlock.__call__
        for block, context in zip(self.blocks, per_layer(contexts, len(self.blocks)), strict=True):
            x = run(block, x, rotation, context)
        return self.norm(x)
