"""Where a streaming step's visible keys sit in a preallocated cache: pure index math.

A step's queries start at a chunk boundary (only a stream's last step may end mid-chunk), so the
keys they can see form one contiguous run of the key timeline: from the first frame of chunk
``cq - left_chunks`` (cq: the step's first query chunk) to the last key appended. A cache bounded
by ``left_chunks`` keeps that run in a ring of ``capacity`` frames; writing every key twice, at its
ring slot and one capacity further on (a mirrored ring), keeps the run contiguous in slot space
whatever the wrap. The attention call then reads the cache in place: keys in slots ``[0, used)``
on the timeline ``k_offset + slot``, where the chunk rule hides the slots before the run (they
fall before its first chunk) and ``used`` ends it at the last key appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def ring_capacity(chunk_k: int, left_chunks: int, step_chunks: int = 1) -> int:
    """Key frames a ring must hold: the ``left_chunks`` chunks before a step's first query chunk and
    the ``step_chunks`` chunks a step covers (decoder chunk n sees encoder chunks n - left .. n)."""
    return (left_chunks + step_chunks) * chunk_k


def first_visible_key(query_frames: torch.Tensor, chunk_q: int, chunk_k: int, left_chunks: int | None):
    """(B,) first key frame any query of the step sees; queries start at ``query_frames``."""
    if left_chunks is None:
        return torch.zeros_like(query_frames)
    first_chunk = torch.div(query_frames, chunk_q, rounding_mode="floor") - left_chunks
    return first_chunk.clamp(min=0) * chunk_k


def write_slots(key_frames: torch.Tensor, rows: int, capacity: int, ring: bool) -> torch.Tensor:
    """(B, rows) slot of each new key row (frames key_frames .. key_frames + rows - 1): its ring
    slot, or its frame index in a linear cache. A mirrored ring writes each row at slot + capacity too."""
    frames = key_frames[:, None] + torch.arange(rows, device=key_frames.device)
    return torch.remainder(frames, capacity) if ring else frames


@dataclass(frozen=True)
class ReadWindow:
    """How one attention call reads a stream's cache in place (all (B,) int64 on the device)."""

    k_offset: torch.Tensor  # timeline frame of slot 0
    used: torch.Tensor  # slots [0, used) may be read; the chunk rule hides those before the run


def read_window(first_key: torch.Tensor, key_end: torch.Tensor, capacity: int, ring: bool) -> ReadWindow:
    """The window that holds key frames [first_key, key_end) of each stream."""
    if not ring:
        return ReadWindow(k_offset=torch.zeros_like(first_key), used=key_end)
    start_slot = torch.remainder(first_key, capacity)
    return ReadWindow(k_offset=first_key - start_slot, used=start_slot + (key_end - first_key))
