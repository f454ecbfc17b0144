"""A decode step's GQA query heads packed into its query rows (flash-attention's pack_gqa).

A streaming step has a few query rows per stream (a chunk: 1-16 frames) and G query heads per
key/value head. Attended as they are, each query head is its own problem: G programs read the same
keys and values, each filling a few rows of a kernel's row tile. Packed, the G heads of a key/value
head become G times as many rows of one problem: (B, S, Hk * G, D) -> (B, S * G, Hk, D), row
m = i * G + g holding frame i of head kv_head * G + g (query head h reads key/value head h // G).

The chunk rule survives the packing exactly, with no change to any kernel: with the query side's
chunk and offset scaled by G, the packed row's chunk is its frame's,

    (G * q_offset + i * G + g) // (G * chunk_q) = (q_offset + i) // chunk_q    for 0 <= g < G,

and the key side, the left-chunk limit and the used key lengths are untouched.
"""

from __future__ import annotations

import torch

from s2s.attention.spec import SequenceChunks


def gqa_group(heads_q: int, heads_k: int) -> int:
    """Query heads per key/value head."""
    if heads_k < 1 or heads_q % heads_k:
        raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_k})")
    return heads_q // heads_k


def pack_queries(q: torch.Tensor, heads_k: int) -> torch.Tensor:
    """(B, S, Hk * G, D) -> (B, S * G, Hk, D), row i * G + g holding frame i of head kv * G + g."""
    batch, frames, heads_q, head_dim = q.shape
    group = gqa_group(heads_q, heads_k)
    packed = q.view(batch, frames, heads_k, group, head_dim).transpose(2, 3)
    return packed.reshape(batch, frames * group, heads_k, head_dim)


def unpack_output(out: torch.Tensor, heads_q: int) -> torch.Tensor:
    """The inverse of `pack_queries` for the attention output: (B, S * G, Hk, D) -> (B, S, Hq, D)."""
    batch, rows, heads_k, head_dim = out.shape
    group = gqa_group(heads_q, heads_k)
    frames = rows // group
    unpacked = out.view(batch, frames, group, heads_k, head_dim).transpose(2, 3)
    return unpacked.reshape(batch, frames, heads_q, head_dim)


def packed_chunks(chunks: SequenceChunks, group: int) -> SequenceChunks:
    """The chunk rule of the packed rows: the query side's chunk and offset times `group`."""
    return SequenceChunks(
        chunk_q=chunks.chunk_q * group,
        chunk_k=chunks.chunk_k,
        q_offset=chunks.q_offset * group,
        k_offset=chunks.k_offset,
        left_chunks=chunks.left_chunks,
    )
