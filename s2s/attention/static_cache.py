"""Static KV caches for the streaming engine: preallocated per stream, written in place, read in place.

Unlike s2s.attention.cache (packed copies, storage grown by doubling, host-side checks), these
caches never read the device from the host inside a step and never move what they hold: each step
writes its new key rows into fixed slots (a mirrored ring of ``left_chunks`` chunks when history
is bounded, else a linear buffer) and attends each stream's queries to its own rows through
``chunk_attention``'s padded layout (``seqused_k``), the GQA group's query heads packed into rows
(``s2s.attention.pack_gqa``). Per-stream frame counts live on the device.
Streams never share an attention row, so one stream's garbage cannot reach another's output.

The caller (the streaming session) owns the checks that need host values: whole chunks per step
except a stream's last, the encoder chunk appended before the decoder attends it, and a linear
cache's capacity (``reserve``). A step writes only slots no query can see before it ends, so
restoring the frame counts (``snapshot`` / ``restore``) undoes a step that failed half way.
"""

from __future__ import annotations

import torch

from s2s.attention.api import chunk_attention
from s2s.attention.cache_window import (
    first_visible_key,
    read_window,
    ring_capacity,
    write_slots,
)
from s2s.attention.pack_gqa import gqa_group, pack_queries, packed_chunks, unpack_output
from s2s.attention.spec import ChunkSpec, SequenceChunks
from s2s.attention.stream_selection import stream_flags

StaticSnapshot = tuple[torch.Tensor, torch.Tensor]


def _int_chunk(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"a static cache takes one positive int {name} for every stream, got {value!r}; "
            "per-stream chunk sizes stream through s2s.attention.cache (engine='packed')"
        )
    return value


class _StaticAttention:
    """The key store and its frame counters; one in-place attention call."""

    def __init__(
        self,
        batch: int,
        heads_k: int,
        head_dim: int,
        chunk_q: int,
        chunk_k: int,
        left_chunks: int | None,
        capacity_frames: int | None,
        step_frames: int | None,
        dtype: torch.dtype,
        device: torch.device | str,
        backend: str,
    ) -> None:
        self.chunk_q = _int_chunk("chunk_q", chunk_q)
        self.chunk_k = _int_chunk("chunk_k", chunk_k)
        if left_chunks is not None and (isinstance(left_chunks, bool) or left_chunks < 0):
            raise ValueError(f"left_chunks must be None or >= 0, got {left_chunks!r}")
        self.left_chunks = left_chunks
        self.step_frames = self.chunk_q if step_frames is None else int(step_frames)
        if self.step_frames < 1:
            raise ValueError(f"step_frames must be >= 1, got {self.step_frames}")
        self.backend = backend
        self.ring = left_chunks is not None
        # key rows one step may append (whole query chunks, in key frames)
        step_chunks = -(-self.step_frames // self.chunk_q)
        self.step_key_frames = step_chunks * self.chunk_k
        if self.ring:
            self.capacity = ring_capacity(self.chunk_k, left_chunks, step_chunks)
            slots = 2 * self.capacity  # the mirror keeps the visible run contiguous
        else:
            if capacity_frames is None or capacity_frames < 1:
                raise ValueError(
                    "a static cache with unlimited history (left_chunks=None) needs capacity_frames "
                    f">= 1 (the longest history to hold), got {capacity_frames!r}"
                )
            self.capacity = int(capacity_frames)
            slots = self.capacity + self.step_key_frames  # padding rows of a step land in the slack
        device = torch.device(device)
        shape = (batch, slots, heads_k, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.key_frames = torch.zeros(batch, dtype=torch.int64, device=device)
        self.query_frames = torch.zeros(batch, dtype=torch.int64, device=device)
        self._chunks_q = torch.full((batch,), self.chunk_q, dtype=torch.int64, device=device)
        self._chunks_k = torch.full((batch,), self.chunk_k, dtype=torch.int64, device=device)

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    def _check(self, name: str, t: torch.Tensor) -> None:
        """k / v (B, n, Hk, D), or q (B, n, Hq, D) with Hk dividing Hq, in the cache's dtype and device."""
        batch, _, heads_k, head_dim = self.keys.shape
        query = name == "q"
        heads_ok = t.dim() == 4 and (t.shape[2] % heads_k == 0 if query else t.shape[2] == heads_k)
        if not heads_ok or t.shape[0] != batch or t.shape[3] != head_dim:
            heads = f"Hq (a multiple of Hk={heads_k})" if query else f"Hk={heads_k}"
            raise ValueError(f"{name} must be (B={batch}, n, {heads}, D={head_dim}), got {tuple(t.shape)}")
        if query and t.shape[1] > self.step_frames:
            raise ValueError(
                f"this cache was built for steps of up to {self.step_frames} query frames, got "
                f"{t.shape[1]}; pass step_frames when creating it"
            )
        if t.dtype != self.keys.dtype or t.device != self.keys.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but the cache holds {self.keys.dtype} on "
                f"{self.keys.device}; create the cache with the model's dtype and device"
            )

    def _write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write every row of k/v (B, n, Hk, D) after each stream's keys; rows past a stream's
        real count land in slots no query sees before they are written again."""
        self._check("k", k)
        self._check("v", v)
        batch, rows = k.shape[:2]
        if rows > self.step_key_frames:
            raise ValueError(f"a step appends at most {self.step_key_frames} key frames, got {rows}")
        slots = write_slots(self.key_frames, rows, self.capacity, self.ring)
        base = torch.arange(batch, device=slots.device)[:, None] * self.slots
        flat = (base + slots).flatten()
        if self.ring:
            flat = torch.cat([flat, flat + self.capacity])
        keys, values = k.flatten(0, 1), v.flatten(0, 1)
        if self.ring:
            keys, values = torch.cat([keys, keys]), torch.cat([values, values])
        self.keys.view(-1, *self.keys.shape[2:]).index_copy_(0, flat, keys)
        self.values.view(-1, *self.values.shape[2:]).index_copy_(0, flat, values)

    def _append(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Write the step's key rows and count each stream's real ones; returns those counts."""
        counts = _counts(lengths, self.batch, k.shape[1], k.device)
        self._write(k, v)
        self.key_frames = self.key_frames + counts
        return counts

    def _attend(self, q: torch.Tensor, counts: torch.Tensor, softmax_scale: float | None) -> torch.Tensor:
        """Queries of the step (B, n, Hq, D) against each stream's keys, read in place."""
        first = first_visible_key(self.query_frames, self.chunk_q, self.chunk_k, self.left_chunks)
        window = read_window(first, self.key_frames, self.capacity, self.ring)
        chunks = SequenceChunks(
            chunk_q=self._chunks_q,
            chunk_k=self._chunks_k,
            q_offset=self.query_frames,
            k_offset=window.k_offset,
            left_chunks=self.left_chunks,
        )
        # The GQA group's heads as rows of one problem per key/value head (s2s.attention.pack_gqa).
        heads_q, group = q.shape[2], gqa_group(q.shape[2], self.keys.shape[2])
        out = chunk_attention(
            pack_queries(q, self.keys.shape[2]),
            self.keys,
            self.values,
            ChunkSpec.from_resolved(packed_chunks(chunks, group)),  # device values: nothing is read back
            seqused_k=window.used.to(torch.int32),
            backend=self.backend,
            softmax_scale=softmax_scale,
        )
        out = unpack_output(out, heads_q)
        self.query_frames = self.query_frames + counts
        real = torch.arange(q.shape[1], device=q.device)[None, :] < counts[:, None]
        return torch.where(real[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))

    def reserve(self, frames: int) -> None:
        """Make a linear cache hold ``frames`` key frames per stream (a host-side decision, before a
        step: the held keys are copied once into larger storage). A ring never needs it."""
        if self.ring or frames <= self.capacity:
            return
        capacity = max(frames, 2 * self.capacity)
        slots = capacity + self.step_key_frames
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((old.shape[0], slots, *old.shape[2:]))
            new[:, : old.shape[1]] = old
            setattr(self, name, new)
        self.capacity = capacity

    def snapshot(self) -> StaticSnapshot:
        return self.key_frames, self.query_frames

    def restore(self, snapshot: StaticSnapshot) -> None:
        self.key_frames, self.query_frames = snapshot

    def reset(self, streams=None) -> None:
        """Start over for the selected streams (all when None): (batch,) bool flags or indices."""
        device = self.key_frames.device
        flags = (
            torch.ones(self.batch, dtype=torch.bool, device=device)
            if streams is None
            else stream_flags(streams, self.batch, device)
        )
        self.key_frames = torch.where(flags, 0, self.key_frames)
        self.query_frames = torch.where(flags, 0, self.query_frames)
        # A new dialogue starts on zeroed rows: whatever the last one left (non-finite keys of a
        # stream that diverged included) cannot reach it through rows a kernel reads but weights 0.
        rows = flags.nonzero().flatten()  # a host read, at reset only (never inside a step)
        self.keys.index_fill_(0, rows, 0)
        self.values.index_fill_(0, rows, 0)


def _counts(lengths: torch.Tensor | None, batch: int, rows: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), rows, dtype=torch.int64, device=device)
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,):
        raise ValueError(f"lengths must be a ({batch},) tensor of real frames per stream, got {lengths!r}")
    return lengths.to(device=device, dtype=torch.int64)


class StaticSelfAttentionCache(_StaticAttention):
    """Streaming chunk-causal self-attention over a static cache: ``step`` writes the new frames'
    K/V and attends the new queries to each stream's held keys, in place."""

    def __init__(
        self,
        batch: int,
        heads_k: int,
        head_dim: int,
        chunk: int,
        left_chunks: int | None = None,
        *,
        capacity_frames: int | None = None,
        step_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            batch, heads_k, head_dim, chunk, chunk, left_chunks, capacity_frames, step_frames,
            dtype, device, backend,
        )  # fmt: skip

    def step(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final=False,
        softmax_scale: float | None = None,
    ) -> torch.Tensor:
        """q (B, n, Hq, D), k/v (B, n, Hk, D): the next frames of every stream; ``lengths`` (B,)
        real frames per stream (0: idle; padded rows come back as zeros). ``final`` is the
        session's concern (it is accepted for the packed caches' signature)."""
        self._check("q", q)
        if k.shape[:2] != q.shape[:2]:
            raise ValueError(f"q and k must cover the same frames, got {tuple(q.shape)} and {tuple(k.shape)}")
        return self._attend(q, self._append(k, v, lengths), softmax_scale)


class StaticCrossAttentionCache(_StaticAttention):
    """Streaming chunk-causal cross-attention over encoder K/V in a static cache: the encoder
    ``append``s each chunk, the decoder's chunk then ``attend``s to encoder chunks up to its own."""

    def __init__(
        self,
        batch: int,
        heads_k: int,
        head_dim: int,
        chunk_q: int,
        chunk_k: int,
        left_chunks: int | None = None,
        *,
        capacity_frames: int | None = None,
        step_frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            batch, heads_k, head_dim, chunk_q, chunk_k, left_chunks, capacity_frames, step_frames,
            dtype, device, backend,
        )  # fmt: skip

    def append(
        self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None, final=False
    ) -> None:
        self._append(k, v, lengths)

    def attend(
        self,
        q: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final=False,
        softmax_scale: float | None = None,
    ) -> torch.Tensor:
        self._check("q", q)
        counts = _counts(lengths, self.batch, q.shape[1], q.device)
        return self._attend(q, counts, softmax_scale)
