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

from dataclasses import dataclass

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


@dataclass(frozen=True, eq=False)
class StepPlan:
    """The index math of one step: where its key rows go and how its queries read the cache.

    The static caches of one model share a geometry and advance together (every step appends and
    attends the same counts on each), so a plan is made once a step (`plan`) and used by every
    cache, instead of each cache redoing the same ~20 small index operations (a CUDA graph's nodes).
    """

    geometry: tuple
    rows: int  # key rows appended and query rows attended per stream
    heads_q: int
    write_index: torch.Tensor  # flat storage rows of the step's key rows (a ring: and their mirror)
    spec: ChunkSpec  # the chunk rule of the GQA-packed query rows
    used: torch.Tensor  # (B,) int32 key rows each stream's queries read
    padding: torch.Tensor  # (B, rows, 1, 1) bool: the query rows past each stream's real ones
    key_frames: torch.Tensor  # (B,) after the step
    query_frames: torch.Tensor  # (B,) after the step


class _StaticAttention:
    """The key store and its frame counters; one in-place attention call."""

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

    def _geometry(self) -> tuple:
        """What a StepPlan's indices depend on besides the frame counts."""
        batch, slots, heads_k, _ = self.keys.shape
        return (batch, slots, heads_k, self.capacity, self.ring, self.chunk_q, self.chunk_k, self.left_chunks)

    def _write_index(self, key_frames: torch.Tensor, rows: int) -> torch.Tensor:
        """Flat storage rows of a step's `rows` key rows per stream, written after `key_frames`
        (a ring: each row twice, at its slot and one capacity on)."""
        if rows > self.step_key_frames:
            raise ValueError(f"a step appends at most {self.step_key_frames} key frames, got {rows}")
        slots = write_slots(key_frames, rows, self.capacity, self.ring)
        base = torch.arange(self.batch, device=slots.device)[:, None] * self.slots
        flat = (base + slots).flatten()
        return torch.cat([flat, flat + self.capacity]) if self.ring else flat

    def _write_at(self, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> None:
        """Write every row of k/v (B, n, Hk, D) at `index`; rows past a stream's real count land in
        slots no query sees before they are written again."""
        self._check("k", k)
        self._check("v", v)
        keys, values = k.flatten(0, 1), v.flatten(0, 1)
        if self.ring:
            keys, values = torch.cat([keys, keys]), torch.cat([values, values])
        if keys.shape[0] != index.shape[0]:
            raise ValueError(f"k/v hold {k.shape[1]} rows per stream, the step's plan writes another count")
        self.keys.view(-1, *self.keys.shape[2:]).index_copy_(0, index, keys)
        self.values.view(-1, *self.values.shape[2:]).index_copy_(0, index, values)

    def _read(self, key_frames, query_frames, counts, rows: int, heads_q: int):
        """(spec, used, padding) of a step's `rows` queries per stream starting at `query_frames`,
        against keys up to `key_frames`: the GQA-packed rows' chunk rule (s2s.attention.pack_gqa),
        the used key rows and which query rows are padding."""
        first = first_visible_key(query_frames, self.chunk_q, self.chunk_k, self.left_chunks)
        window = read_window(first, key_frames, self.capacity, self.ring)
        chunks = SequenceChunks(
            chunk_q=self._chunks_q,
            chunk_k=self._chunks_k,
            q_offset=query_frames,
            k_offset=window.k_offset,
            left_chunks=self.left_chunks,
        )
        group = gqa_group(heads_q, self.keys.shape[2])
        spec = ChunkSpec.from_resolved(packed_chunks(chunks, group))  # device values: nothing is read back
        padding = torch.arange(rows, device=counts.device)[None, :] >= counts[:, None]
        return spec, window.used.to(torch.int32), padding[:, :, None, None]

    def _attend_with(self, q, spec: ChunkSpec, used, padding, softmax_scale: float | None) -> torch.Tensor:
        """Queries of the step (B, n, Hq, D) against each stream's keys, read in place, the GQA
        group's heads as rows of one problem per key/value head; padded rows come back as zeros."""
        out = chunk_attention(
            pack_queries(q, self.keys.shape[2]),
            self.keys,
            self.values,
            spec,
            seqused_k=used,
            backend=self.backend,
            softmax_scale=softmax_scale,
        )
        out = unpack_output(out, q.shape[2])
        return out.masked_fill(padding, 0)

    def plan(self, counts: torch.Tensor, rows: int, heads_q: int) -> StepPlan:
        """The index math of a step that appends `rows` key rows per stream (`counts` (B,) int64
        real) and then attends `rows` queries of `heads_q` heads: made once, it serves every cache
        of the same geometry whose streams stand at the same frames."""
        key_frames = self.key_frames + counts
        spec, used, padding = self._read(key_frames, self.query_frames, counts, rows, heads_q)
        return StepPlan(
            geometry=self._geometry(),
            rows=rows,
            heads_q=heads_q,
            write_index=self._write_index(self.key_frames, rows),
            spec=spec,
            used=used,
            padding=padding,
            key_frames=key_frames,
            query_frames=self.query_frames + counts,
        )

    def _check_plan(self, plan: StepPlan, rows: int, heads_q: int) -> None:
        if plan.geometry != self._geometry() or (plan.rows, plan.heads_q) != (rows, heads_q):
            raise ValueError(
                "this step plan was made by a cache of another geometry or for another step shape "
                f"({plan.geometry}, {plan.rows} rows, {plan.heads_q} heads vs {self._geometry()}, {rows}, "
                f"{heads_q}); share a plan only between caches built alike and stepped together"
            )

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
        **options,
    ) -> None:
        """One chunk size for queries and keys; `options`: capacity_frames, step_frames, dtype,
        device, backend (as the cross-attention cache)."""
        super().__init__(batch, heads_k, head_dim, chunk, chunk, left_chunks, **options)

    def step(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final=False,
        softmax_scale: float | None = None,
        plan: StepPlan | None = None,
    ) -> torch.Tensor:
        """q (B, n, Hq, D), k/v (B, n, Hk, D): the next frames of every stream; ``lengths`` (B,)
        real frames per stream (0: idle; padded rows come back as zeros). ``final`` is the
        session's concern (it is accepted for the packed caches' signature). ``plan``: the step's
        index math made by a cache built alike and standing at the same frames (its counts are the
        step's ``lengths``); made here when not given."""
        self._check("q", q)
        if k.shape[:2] != q.shape[:2]:
            raise ValueError(f"q and k must cover the same frames, got {tuple(q.shape)} and {tuple(k.shape)}")
        rows, heads_q = q.shape[1], q.shape[2]
        if plan is None:
            plan = self.plan(_counts(lengths, self.batch, rows, q.device), rows, heads_q)
        else:
            self._check_plan(plan, rows, heads_q)
        self._write_at(k, v, plan.write_index)
        out = self._attend_with(q, plan.spec, plan.used, plan.padding, softmax_scale)
        self.key_frames, self.query_frames = plan.key_frames, plan.query_frames
        return out


class StaticCrossAttentionCache(_StaticAttention):
    """Streaming chunk-causal cross-attention over encoder K/V in a static cache: the encoder
    ``append``s each chunk, the decoder's chunk then ``attend``s to encoder chunks up to its own."""

    def append(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final=False,
        plan: StepPlan | None = None,
    ) -> None:
        """The encoder chunk's k/v (B, n, Hk, D); with ``plan`` (a whole step's, see
        StaticSelfAttentionCache.step), its write index, else computed here."""
        rows = k.shape[1]
        if plan is None:
            index = self._write_index(self.key_frames, rows)
            key_frames = self.key_frames + _counts(lengths, self.batch, rows, k.device)
        else:
            self._check_plan(plan, rows, plan.heads_q)
            index, key_frames = plan.write_index, plan.key_frames
        self._write_at(k, v, index)
        self.key_frames = key_frames

    def attend(
        self,
        q: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final=False,
        softmax_scale: float | None = None,
        plan: StepPlan | None = None,
    ) -> torch.Tensor:
        """The decoder chunk's q (B, n, Hq, D) against the encoder frames held up to its own chunk;
        with ``plan``, the one ``append`` took in the same step."""
        self._check("q", q)
        rows, heads_q = q.shape[1], q.shape[2]
        if plan is None:
            counts = _counts(lengths, self.batch, rows, q.device)
            spec, used, padding = self._read(self.key_frames, self.query_frames, counts, rows, heads_q)
            query_frames = self.query_frames + counts
        else:
            self._check_plan(plan, rows, heads_q)
            spec, used, padding, query_frames = plan.spec, plan.used, plan.padding, plan.query_frames
        out = self._attend_with(q, spec, used, padding, softmax_scale)
        self.query_frames = query_frames
        return out
