"""Decoder on the same timeline as the encoder: chunk-causal self-attention over its own past and
chunk-causal cross-attention over the encoder. Its input at frame t is what it produced at frame
t - C (the previous chunk), so all frames of a chunk are produced at once and none sees its target."""

from __future__ import annotations

import torch
from torch import nn

from s2s.models.attention import CrossAttention, SelfAttention
from s2s.models.attention_context import AttentionContext, StackContexts, per_layer, streaming
from s2s.models.config import DuplexConfig
from s2s.models.layers import FeedForward, Rotation, residual_stream


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
        self_context: AttentionContext,
        cross_context: AttentionContext,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.self_attention_norm(x), rotation, self_context))
        x = x + self.dropout(self.cross_attention(self.cross_attention_norm(x), encoded, cross_context))
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
        self, x, positions, encoded, self_contexts: StackContexts, cross_contexts: StackContexts
    ) -> torch.Tensor:
        """x (B, n, dim) at absolute `positions` (B, n) over the encoder's output `encoded`; the
        contexts: one OfflineAttention each for a whole pass (self- and cross-attention may differ
        in spec), or one CachedSelfAttention / CachedCrossAttention per layer for a streaming chunk."""
        x = residual_stream(x, self.norm)
        streams = streaming(self_contexts)
        if self.graphs is not None and not streams and cross_contexts is self_contexts:
            graphed = self.graphs(x, positions, self_contexts.spec, self_contexts.layout, encoded=encoded)
            if graphed is not None:
                return self.norm(graphed)
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        run = DecoderBlock.forward if streams else DecoderBlock.__call__
        layers = len(self.blocks)
        for block, self_context, cross_context in zip(
            self.blocks, per_layer(self_contexts, layers), per_layer(cross_contexts, layers), strict=True
        ):
            x = run(block, x, rotation, encoded, self_context, cross_context)
        return self.norm(x)
