"""The model's attention layers: one code path for both modes. A layer projects its frames and hands
q, k, v to the call's context (s2s.models.attention_context): offline it runs chunk_attention on
whole sequences, streaming it runs one chunk against the layer's KV cache of s2s.attention."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from s2s.attention import ChunkSpec, CrossAttentionCache, SelfAttentionCache, chunk_attention
from s2s.attention.custom_op import OPERATOR_BACKENDS, attention_operator
from s2s.attention.static_cache import StaticCrossAttentionCache, StaticSelfAttentionCache
from s2s.models.config import DuplexConfig
from s2s.models.layers import Rotation
from s2s.models.packing import AlignedLayout, PackedLayout, PackedRows, runs_unpacked

if TYPE_CHECKING:
    from s2s.models.attention_context import AttentionContext


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: ChunkSpec,
    layout: PackedLayout | AlignedLayout | PackedRows | None,
    backend: str,
) -> torch.Tensor:
    """Chunk-causal attention over a padded batch (B, T, H, D) whose valid frames are `layout`'s,
    or over packed rows (1, N, H, D) (a PackedRows layout: the graphed block stacks').

    Padded frames must never be keys (a query in a sequence's last, short chunk would see them).
    When the chunks already hide them (every length a multiple of its chunk, as training crops
    with data.crop_multiple_frames are), the padded batch runs as it is, with each sequence's
    length as `seqused_q`: padded query rows are not computed and come back as zeros. Otherwise
    it is packed into variable-length form, and padded rows come back as zeros too. The layout's
    host offsets go along, so choosing, packing and checking never wait for the device.

    Under torch.compile, a batch that runs unpacked with the chunk rule in device tensors (what the
    graphed block stacks pass: an AlignedLayout) stays inside the compiled graph: the CuTe kernel
    (and the reference) through the registered operator (s2s.attention.custom_op), FlexAttention
    and SDPA traced as they are. Other calls take the eager path, where the compiled graph splits.
    """
    if isinstance(layout, PackedRows):
        return _attend_packed_rows(q, k, v, spec, layout, backend)
    if torch.compiler.is_compiling() and isinstance(layout, AlignedLayout):
        if backend in OPERATOR_BACKENDS:
            return attention_operator(q, k, v, spec, backend, seqused_q=layout.seqused)
        return chunk_attention(q, k, v, spec, backend=backend, seqused_q=layout.seqused)
    return _attend_eager(q, k, v, spec, layout, backend)


def _attend_packed_rows(q, k, v, spec: ChunkSpec, rows: PackedRows, backend: str) -> torch.Tensor:
    """Packed rows (1, N, H, D): attention packed, with the offsets as device tensors and their
    bound as a host int, so nothing is read on the host (inside a CUDA graph)."""
    if q.shape[0] != 1 or k.shape[0] != 1:
        raise ValueError(
            f"packed rows are one row of frames (1, N, H, D), got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    packed = {
        "cu_seqlens_q": rows.cu_seqlens,
        "cu_seqlens_k": rows.cu_seqlens,
        "max_seqlen_q": rows.max_seqlen,
        "max_seqlen_k": rows.max_seqlen,
    }
    if backend in OPERATOR_BACKENDS:
        return attention_operator(q[0], k[0], v[0], spec, backend, **packed).unsqueeze(0)
    return chunk_attention(q[0], k[0], v[0], spec, backend=backend, **packed).unsqueeze(0)


def _used_query_rows(layout: PackedLayout | AlignedLayout | None) -> torch.Tensor | None:
    """seqused_q of an unpacked call: the layout's lengths, or None without padding."""
    if layout is None or not layout.has_padding:
        return None
    return layout.seqused


@torch.compiler.disable  # an opaque call inside compiled blocks (s2s/models/regional_compile.py)
def _attend_eager(q, k, v, spec: ChunkSpec, layout, backend: str) -> torch.Tensor:
    """The eager path of `attend` (opaque to torch.compile: a packed layout and its host offsets
    would become guards)."""
    if layout is not None and not (layout.batch, layout.frames) == q.shape[:2] == k.shape[:2]:
        raise ValueError(
            f"the packing layout is for (B, T) = {(layout.batch, layout.frames)}, "
            f"but q is {tuple(q.shape)} and k {tuple(k.shape)}; build it from this batch's lengths"
        )
    if runs_unpacked(spec, layout):
        return chunk_attention(q, k, v, spec, backend=backend, seqused_q=_used_query_rows(layout))
    packed = chunk_attention(
        *(t.flatten(0, 1).index_select(0, layout.indices) for t in (q, k, v)),
        spec,
        cu_seqlens_q=layout.cu_seqlens,
        cu_seqlens_k=layout.cu_seqlens,
        cu_seqlens_q_host=layout.offsets,
        cu_seqlens_k_host=layout.offsets,
        backend=backend,
    )
    out = q.new_zeros((q.shape[0] * q.shape[1], *q.shape[2:])).index_copy(0, layout.indices, packed)
    return out.view(q.shape)


class _Projections(nn.Module):
    """Query, grouped key/value and output projections shared by both attention layers."""

    def __init__(self, config: DuplexConfig):
        super().__init__()
        self.config = config
        self.query = nn.Linear(config.dim, config.heads * config.head_dim, bias=False)
        self.key_value = nn.Linear(config.dim, 2 * config.kv_heads * config.head_dim, bias=False)
        self.out = nn.Linear(config.heads * config.head_dim, config.dim, bias=False)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x).view(*x.shape[:2], self.config.heads, self.config.head_dim)

    def _keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        k, v = self.key_value(x).view(*x.shape[:2], 2, c.kv_heads, c.head_dim).unbind(dim=2)
        return k, v


class SelfAttention(_Projections):
    """Chunk-causal multi-head self-attention with rotary positions and grouped K/V heads."""

    def _project(self, x: torch.Tensor, rotation: Rotation):
        k, v = self._keys_values(x)
        return rotation.apply(self._queries(x)), rotation.apply(k), v.contiguous()

    def forward(self, x, rotation: Rotation, context: AttentionContext) -> torch.Tensor:
        return self.out(context.attend(*self._project(x, rotation)).flatten(2))

    def new_cache(
        self, batch: int, chunk, left_chunks, device, dtype, engine: str = "packed", capacity_frames=None
    ) -> SelfAttentionCache | StaticSelfAttentionCache:
        """The layer's streaming cache: `engine` "static" (preallocated, read in place; a linear
        cache holds `capacity_frames`) or "packed" (the previous engine's growing cache)."""
        c = self.config
        if engine == "static":
            return StaticSelfAttentionCache(
                batch, c.kv_heads, c.head_dim, chunk, left_chunks, capacity_frames=capacity_frames,
                dtype=dtype, device=device, backend=c.attention_backend,
            )  # fmt: skip
        return SelfAttentionCache(
            batch,
            c.kv_heads,
            c.head_dim,
            chunk,
            left_chunks,
            dtype=dtype,
            device=device,
            backend=c.attention_backend,
        )


class CrossAttention(_Projections):
    """Decoder frames attend to encoder frames of their own chunk and earlier ones (no positions:
    the chunk rule already aligns the two streams on one timeline)."""

    def memory(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder K/V (B, n, Hk, D): projected once per encoder chunk, then cached."""
        k, v = self._keys_values(encoded)
        return k.contiguous(), v.contiguous()

    def forward(self, x, encoded, context: AttentionContext) -> torch.Tensor:
        """Decoder frames x attend to `encoded` (offline: the whole encoder pass; streaming: the
        encoder's chunk, which the context adds to the cache first)."""
        return self.out(context.attend(self._queries(x), *self.memory(encoded)).flatten(2))

    def new_cache(
        self, batch: int, chunk, left_chunks, device, dtype, engine: str = "packed", capacity_frames=None
    ) -> CrossAttentionCache | StaticCrossAttentionCache:
        c = self.config
        if engine == "static":
            return StaticCrossAttentionCache(
                batch, c.kv_heads, c.head_dim, chunk, chunk, left_chunks, capacity_frames=capacity_frames,
                dtype=dtype, device=device, backend=c.attention_backend,
            )  # fmt: skip
        return CrossAttentionCache(
            batch, c.kv_heads, c.head_dim, chunk, chunk, left_chunks, dtype=dtype, device=device,
            backend=c.attention_backend,
        )  # fmt: skip
