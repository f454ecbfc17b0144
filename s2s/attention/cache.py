"""KV caches for streaming: attention of one chunk at a time against everything before it.

Keys are stored per stream on an absolute timeline: ``evicted`` keys have been dropped from the
front, ``lengths`` are held. Each attention call packs the held keys of all streams (varlen) and
describes the timeline to ``chunk_attention`` with ``q_offset`` / ``k_offset``, so a chunk
streamed against its cache gets exactly what one offline pass over the whole sequence gives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from s2s.attention.api import chunk_attention
from s2s.attention.mask import chunk_index
from s2s.attention.spec import ChunkSpec
from s2s.attention.stream_selection import final_flags, stream_flags

ChunkSize = int | torch.Tensor


def _stream_lengths(lengths: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """Valid new rows per stream: all n when not given; checked against the padded size."""
    if lengths is None:
        return torch.full((batch,), n, dtype=torch.int64, device=device)
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths must have one value per stream, shape ({batch},), got {tuple(lengths.shape)}"
        )
    lengths = lengths.to(device=device, dtype=torch.int64)
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > n):
        raise ValueError(f"lengths must lie in [0, {n}] (the chunk's padded size), got {lengths.tolist()}")
    return lengths


def _valid_rows(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) boolean: row i of stream b is real (not padding)."""
    return torch.arange(n, device=lengths.device).view(1, -1) < lengths.view(-1, 1)


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


@dataclass
class KVStore:
    """Per-stream keys and values: storage (B, capacity, Hk, D), held count and evicted count."""

    keys: torch.Tensor
    values: torch.Tensor
    lengths: torch.Tensor  # (B,) int64: keys held per stream
    evicted: torch.Tensor  # (B,) int64: absolute index of each stream's first held key
    grow_by_doubling: bool = True

    @staticmethod
    def empty(
        batch: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        grow_by_doubling: bool = True,
    ) -> KVStore:
        storage = torch.zeros((batch, 0, heads, head_dim), dtype=dtype, device=device)
        counts = torch.zeros(batch, dtype=torch.int64, device=device)
        return KVStore(storage, storage.clone(), counts, counts.clone(), grow_by_doubling)

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]

    def _check(self, name: str, t: torch.Tensor) -> None:
        batch, _, heads, head_dim = self.keys.shape
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2:] != (heads, head_dim):
            raise ValueError(f"{name} must be (B={batch}, n, Hk={heads}, D={head_dim}), got {tuple(t.shape)}")
        if t.dtype != self.keys.dtype or t.device != self.keys.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but the cache holds {self.keys.dtype} on "
                f"{self.keys.device}; create the cache with the model's dtype and device"
            )

    def _reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_capacity = max(needed, 2 * self.capacity) if self.grow_by_doubling else needed
        extra = new_capacity - self.capacity
        pad = (0, 0, 0, 0, 0, extra)
        self.keys = torch.nn.functional.pad(self.keys, pad)
        self.values = torch.nn.functional.pad(self.values, pad)

    def append(self, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor) -> None:
        """Write the first counts[b] rows of k[b], v[b] after each stream's held keys."""
        self._check("k", k)
        self._check("v", v)
        if k.shape[0] == 0:
            return
        self._reserve(int((self.lengths + counts).max()))
        valid = _valid_rows(counts, k.shape[1])
        stream, row = valid.nonzero(as_tuple=True)
        slot = self.lengths[stream] + row
        self.keys[stream, slot] = k[stream, row]
        self.values[stream, slot] = v[stream, row]
        self.lengths = self.lengths + counts

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Held keys and values of all streams back to back, with their cu_seqlens."""
        held = _valid_rows(self.lengths, self.capacity)
        return self.keys[held], self.values[held], _cumulative(self.lengths)

    def evict_before(self, first_kept: torch.Tensor) -> None:
        """Drop each stream's keys whose absolute index is below first_kept[b]."""
        drop = torch.minimum((first_kept - self.evicted).clamp(min=0), self.lengths)
        if not bool((drop > 0).any()):
            return
        source = torch.arange(self.capacity, device=drop.device).view(1, -1) + drop.view(-1, 1)
        source = source.clamp(max=max(self.capacity - 1, 0))
        index = source.view(*source.shape, 1, 1).expand_as(self.keys)
        self.keys = torch.gather(self.keys, 1, index)
        self.values = torch.gather(self.values, 1, index)
        self.lengths = self.lengths - drop
        self.evicted = self.evicted + drop

    def reset(self, streams: torch.Tensor) -> None:
        """Forget everything held for the streams marked True (a new dialogue starts there)."""
        self.lengths = torch.where(streams, 0, self.lengths)
        self.evicted = torch.where(streams, 0, self.evicted)


def _first_needed_key(
    position: torch.Tensor, chunk_q: ChunkSize, chunk_k: ChunkSize, left_chunks: int
) -> torch.Tensor:
    """Absolute index of the first key that a query at ``position`` (or later) can still see."""
    return (chunk_index(position, chunk_q, 0) - left_chunks) * chunk_k


def _as_stream_tensor(value: ChunkSize, device: torch.device) -> ChunkSize:
    return value.to(device=device, dtype=torch.int64) if isinstance(value, torch.Tensor) else value


def _stream_list(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


@dataclass
class ChunkedTimeline:
    """Frames consumed per stream on one chunked timeline. A step covers whole chunks: a query in
    an unfinished chunk would miss the keys of its own chunk that arrive later, and streaming would
    no longer equal the offline pass. Only a stream's ``final`` step may end mid-chunk."""

    name: str
    chunk: ChunkSize
    positions: torch.Tensor  # (B,) int64: frames consumed
    ended: torch.Tensor  # (B,) bool: the stream had its final step; reset before feeding more

    def check_step(self, counts: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """The positions after the step, or a clear error; changes nothing."""
        active = counts > 0
        if bool((active & self.ended).any()):
            raise ValueError(
                f"{self.name} stream(s) {_stream_list(active & self.ended)} already had their final "
                f"step; reset() them before feeding new frames"
            )
        end = self.positions + counts
        mid_chunk = active & ~final & (torch.remainder(end, self.chunk) != 0)
        if bool(mid_chunk.any()):
            streams = _stream_list(mid_chunk)
            raise ValueError(
                f"{self.name} step ends mid-chunk for stream(s) {streams} (at frame(s) "
                f"{end[mid_chunk].tolist()}, chunk {self.chunk}): a chunk's queries would miss keys "
                f"of their own chunk that arrive later. Feed whole chunks, or pass final=True for a "
                f"stream's last, short chunk"
            )
        return end

    def advance(self, end: torch.Tensor, counts: torch.Tensor, final: torch.Tensor) -> None:
        self.ended = self.ended | (final & (counts > 0))
        self.positions = end

    def reset(self, streams: torch.Tensor) -> None:
        self.positions = torch.where(streams, 0, self.positions)
        self.ended = self.ended & ~streams


CacheSnapshot = dict[str, "KVStore | ChunkedTimeline"]  # attribute name -> a shallow copy


class _StreamingAttention:
    """What both caches share: the key store, the query timeline, one attention call."""

    def __init__(
        self,
        batch: int,
        heads_k: int,
        head_dim: int,
        chunk_q: ChunkSize,
        chunk_k: ChunkSize,
        left_chunks: int | None,
        dtype: torch.dtype,
        device: torch.device | str,
        backend: str,
    ) -> None:
        ChunkSpec(chunk_q, chunk_k, left_chunks)  # checks sizes now rather than at the first step
        device = torch.device(device)
        self.chunk_q = _as_stream_tensor(chunk_q, device)
        self.chunk_k = _as_stream_tensor(chunk_k, device)
        self.left_chunks = left_chunks
        self.backend = backend
        self.store = KVStore.empty(
            batch, heads_k, head_dim, dtype, device, grow_by_doubling=left_chunks is None
        )
        self.queries = self._timeline("query", self.chunk_q, batch, device)

    @staticmethod
    def _timeline(name: str, chunk: ChunkSize, batch: int, device: torch.device) -> ChunkedTimeline:
        return ChunkedTimeline(
            name,
            chunk,
            torch.zeros(batch, dtype=torch.int64, device=device),
            torch.zeros(batch, dtype=torch.bool, device=device),
        )

    @property
    def batch(self) -> int:
        return self.queries.positions.shape[0]

    def _check_queries(self, q: torch.Tensor) -> None:
        if q.dim() != 4 or q.shape[0] != self.batch or q.shape[-1] != self.store.keys.shape[-1]:
            raise ValueError(
                f"q must be (B={self.batch}, n, Hq, D={self.store.keys.shape[-1]}), got {tuple(q.shape)}"
            )
        if q.dtype != self.store.keys.dtype or q.device != self.store.keys.device:
            raise ValueError(
                f"q is {q.dtype} on {q.device} but the cache holds {self.store.keys.dtype} on "
                f"{self.store.keys.device}; create the cache with the model's dtype and device"
            )

    def _attend(
        self,
        q: torch.Tensor,
        counts: torch.Tensor,
        end: torch.Tensor,
        final: torch.Tensor,
        softmax_scale: float | None,
    ) -> torch.Tensor:
        valid = _valid_rows(counts, q.shape[1])
        keys, values, cu_seqlens_k = self.store.packed()
        spec = ChunkSpec(
            self.chunk_q,
            self.chunk_k,
            self.left_chunks,
            q_offset=self.queries.positions.int(),
            k_offset=self.store.evicted.int(),
        )
        packed_out = chunk_attention(
            q[valid],
            keys,
            values,
            spec,
            cu_seqlens_q=_cumulative(counts),
            cu_seqlens_k=cu_seqlens_k,
            backend=self.backend,
            softmax_scale=softmax_scale,
        )
        out = q.new_zeros(q.shape)
        out[valid] = packed_out
        self.queries.advance(end, counts, final)
        if self.left_chunks is not None:
            self.store.evict_before(
                _first_needed_key(self.queries.positions, self.chunk_q, self.chunk_k, self.left_chunks)
            )
        return out

    def snapshot(self) -> CacheSnapshot:
        """The cache's state by reference: a step replaces these tensors or writes past the held
        keys, never into what is held, so `restore` undoes a step that failed half way (the key
        store and every timeline, the cross-attention cache's encoder timeline included)."""
        return {
            name: dataclasses.replace(value)
            for name, value in vars(self).items()
            if isinstance(value, KVStore | ChunkedTimeline)
        }

    def restore(self, snapshot: CacheSnapshot) -> None:
        for name, value in snapshot.items():
            setattr(self, name, dataclasses.replace(value))

    def _streams(self, streams) -> torch.Tensor:
        device = self.queries.positions.device
        if streams is None:
            return torch.ones(self.batch, dtype=torch.bool, device=device)
        return stream_flags(streams, self.batch, device)

    def reset(self, streams=None) -> None:
        """Start over for the selected streams (all when None): (batch,) bool flags or indices."""
        streams = self._streams(streams)
        self.store.reset(streams)
        self.queries.reset(streams)


class SelfAttentionCache(_StreamingAttention):
    """Streaming chunk-causal self-attention. ``step`` appends the new frames' K/V, attends the
    new queries to everything held, and, with ``left_chunks``, drops keys no future query sees:
    the cache then never holds more than ``(left_chunks + 1) * chunk - 1`` keys between steps."""

    def __init__(
        self,
        batch: int,
        heads_k: int,
        head_dim: int,
        chunk: ChunkSize,
        left_chunks: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        backend: str = "auto",
    ) -> None:
        super().__init__(batch, heads_k, head_dim, chunk, chunk, left_chunks, dtype, device, backend)

    def step(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final: bool | torch.Tensor = False,
        softmax_scale: float | None = None,
    ) -> torch.Tensor:
        """q (B, n, Hq, D), k/v (B, n, Hk, D): the next frames of every stream, whole chunks;
        ``lengths`` (B,) says how many are real per stream (padding rows come back as zeros);
        ``final`` marks a stream's last step, which may end on a short chunk."""
        self._check_queries(q)
        if k.shape[:2] != q.shape[:2]:
            raise ValueError(f"q and k must cover the same frames, got {tuple(q.shape)} and {tuple(k.shape)}")
        counts = _stream_lengths(lengths, self.batch, q.shape[1], q.device)
        final = final_flags(final, self.batch, q.device)
        end = self.queries.check_step(counts, final)
        self.store.append(k, v, counts)
        return self._attend(q, counts, end, final, softmax_scale)


class CrossAttentionCache(_StreamingAttention):
    """Streaming chunk-causal cross-attention over encoder K/V. The encoder ``append``s each of its
    chunks once (chunk_k frames); the decoder's chunk n (chunk_q frames) then ``attend``s to
    encoder chunks <= n, which must have arrived. With ``left_chunks``, encoder chunks that no
    future decoder chunk sees are dropped."""

    def __init__(
        self,
        batch: int,
        heads_k: int,
        head_dim: int,
        chunk_q: ChunkSize,
        chunk_k: ChunkSize,
        left_chunks: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        backend: str = "auto",
    ) -> None:
        super().__init__(batch, heads_k, head_dim, chunk_q, chunk_k, left_chunks, dtype, device, backend)
        self.keys = self._timeline("encoder", self.chunk_k, batch, torch.device(device))

    def append(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final: bool | torch.Tensor = False,
    ) -> None:
        """Add the encoder's next frames (B, n, Hk, D), whole chunks; ``lengths`` (B,) real frames
        per stream; ``final`` marks the encoder stream's end (it may end on a short chunk)."""
        counts = _stream_lengths(lengths, self.batch, k.shape[1], k.device)
        final = final_flags(final, self.batch, k.device)
        end = self.keys.check_step(counts, final)
        self.store.append(k, v, counts)
        self.keys.advance(end, counts, final)

    def attend(
        self,
        q: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final: bool | torch.Tensor = False,
        softmax_scale: float | None = None,
    ) -> torch.Tensor:
        """Decoder queries (B, n, Hq, D) for its next frames against the encoder frames held."""
        self._check_queries(q)
        counts = _stream_lengths(lengths, self.batch, q.shape[1], q.device)
        final = final_flags(final, self.batch, q.device)
        end = self.queries.check_step(counts, final)
        last_chunk = chunk_index(end - 1, self.chunk_q, 0)
        needed = (last_chunk + 1) * self.chunk_k
        missing = (counts > 0) & ~self.keys.ended & (self.keys.positions < needed)
        if bool(missing.any()):
            raise ValueError(
                f"decoder frames up to {end[missing].tolist()} see encoder frames up to "
                f"{needed[missing].tolist()}, but stream(s) {_stream_list(missing)} hold only "
                f"{self.keys.positions[missing].tolist()}: append the encoder chunk first"
            )
        return self._attend(q, counts, end, final, softmax_scale)

    def reset(self, streams: torch.Tensor | None = None) -> None:
        super().reset(streams)
        self.keys.reset(self._streams(streams))
