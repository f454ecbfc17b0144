"""ServeHub: one batched streaming session shared by every connection, stepped on the server's clock.

Each connection owns one row (stream) of the session for as long as it is open. The hub keeps the
audio each client has sent (its backlog), and once per chunk duration steps every stream that has a
whole chunk waiting; the others are idle that step (0 samples: their state is left as it was), so a
slow client only delays itself. Streams join and leave through the session's reset flags: a CUDA
graph of the step is never recaptured for a new dialogue. A backlog is capped (the oldest audio is
dropped and counted), and replies go into a bounded queue per connection that the connection's
sender drains: when a client stops reading, its queue fills and the hub drops the connection.

The clock may tick several times per chunk (`ticks_per_chunk`): a chunk then waits at most
chunk / ticks for its step instead of up to a whole chunk, which shortens what a person hears as the
reply's delay, at the price of more steps (a step of a batched session costs the whole batch, however
few rows have a chunk waiting). Each stream still steps once per chunk of its audio.

The step itself runs in a worker thread, so the event loop keeps receiving audio while the model
works; everything else (backlogs, resets, replies) happens on the loop between steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from s2s.data.tokens import SPECIALS
from s2s.serve.protocol import ChunkReply
from s2s.streaming.token_session import TokenStep

logger = logging.getLogger(__name__)


@dataclass
class HubLimits:
    """How much one connection may hold on the server."""

    backlog_samples: int  # user audio kept waiting for the model; beyond it the oldest is dropped
    max_pending_replies: int = 32  # replies queued for a client that is not reading (~5 s at 160 ms)
    # a stream is started afresh when its dialogue reaches this many model frames (static caches of
    # unbounded history have a fixed capacity); None: never
    max_dialogue_frames: int | None = None


@dataclass
class Stream:
    """One connection's row of the session and what the hub keeps for it."""

    row: int
    replies: asyncio.Queue
    backlog: deque = field(default_factory=deque)  # float32 arrays, oldest first
    waiting: int = 0  # samples in backlog
    position: int = 0  # received samples that have left the backlog (stepped or dropped)
    dropped: int = 0
    chunks: int = 0  # chunks stepped in this dialogue
    fresh: bool = True  # the session's row must be reset before it next steps
    closed: bool = False
    overflowed: bool = False  # its reply queue filled: the connection is dropped
    notices: list = field(default_factory=list)  # control messages for the client (dicts)
    drop: Callable[[], None] | None = None  # the connection's own way to hang up on a stalled client

    def take(self, samples: int) -> np.ndarray:
        """The oldest `samples` of the backlog (it holds at least that many)."""
        pieces, needed = [], samples
        while needed:
            head = self.backlog[0]
            if len(head) <= needed:
                pieces.append(self.backlog.popleft())
                needed -= len(head)
            else:
                pieces.append(head[:needed])
                self.backlog[0] = head[needed:]
                needed = 0
        self.waiting -= samples
        self.position += samples
        return np.concatenate(pieces)


@dataclass
class HubStats:
    """What the server reports at /stats."""

    steps: int = 0
    late_steps: int = 0  # steps that started more than one tick period after their tick
    stepped_chunks: int = 0  # stream-chunks stepped (a step of 8 active streams counts 8)
    dropped_samples: int = 0
    dropped_connections: int = 0  # clients dropped for not reading
    refused_connections: int = 0  # server full
    failed_steps: int = 0
    last_error: str | None = None
    step_ms: deque = field(default_factory=lambda: deque(maxlen=2000))

    def summary(self, connections: int, capacity: int) -> dict:
        times = np.asarray(self.step_ms, dtype=np.float64)
        quantile = (lambda q: round(float(np.quantile(times, q)), 3)) if len(times) else (lambda q: None)
        return {
            "connections": connections, "capacity": capacity, "steps": self.steps,
            "late_steps": self.late_steps, "stepped_chunks": self.stepped_chunks,
            "dropped_samples": self.dropped_samples, "dropped_connections": self.dropped_connections,
            "refused_connections": self.refused_connections, "failed_steps": self.failed_steps,
            "last_error": self.last_error, "step_ms_p50": quantile(0.5),
            "step_ms_p99": quantile(0.99),
        }  # fmt: skip


@dataclass(frozen=True)
class PlannedChunk:
    """A stream's chunk in this step, numbered when its audio was taken: a reset or an overflow
    while the step runs changes the stream, not what this reply says about this chunk."""

    stream: Stream
    chunk: int
    consumed: int
    dropped: int


@dataclass
class StepResult:
    """A step's outputs for the rows that stepped, on the CPU (made in the worker thread)."""

    rows: list[int]
    audio: np.ndarray | None  # (rows, chunk_samples) int16
    speaking: np.ndarray  # (rows, chunk_frames) float32
    tokens: np.ndarray | None  # (rows, chunk_frames) int64, model v2
    milliseconds: float


class ServeHub:
    """Owns `session` (a StreamingSession of `session.batch` rows) for the server's connections."""

    def __init__(self, session, limits: HubLimits, vocabulary=None, ticks_per_chunk: int = 1):
        if not isinstance(ticks_per_chunk, int) or ticks_per_chunk < 1:
            raise ValueError(f"ticks_per_chunk must be an integer >= 1, got {ticks_per_chunk!r}")
        self.session = session
        self.ticks_per_chunk = ticks_per_chunk
        self.limits = limits
        self.vocabulary = vocabulary
        self.chunk_samples = session.chunk_samples
        config = session.model.config
        self.chunk_seconds = self.chunk_samples / config.sample_rate
        self.streams: list[Stream | None] = [None] * session.batch
        self.stats = HubStats()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="s2s-step")
        self._stopping = asyncio.Event()

    @property
    def capacity(self) -> int:
        return len(self.streams)

    @property
    def connections(self) -> int:
        return sum(stream is not None for stream in self.streams)

    def join(self) -> Stream | None:
        """A free row for a new connection (its state reset before its first step), or None: full."""
        for row, stream in enumerate(self.streams):
            if stream is None:
                self.streams[row] = Stream(row, asyncio.Queue(self.limits.max_pending_replies))
                return self.streams[row]
        self.stats.refused_connections += 1
        return None

    def leave(self, stream: Stream) -> None:
        stream.closed = True
        if self.streams[stream.row] is stream:
            self.streams[stream.row] = None

    def receive(self, stream: Stream, samples: np.ndarray) -> None:
        """Queue a client's audio; past the backlog limit the oldest samples are dropped."""
        stream.backlog.append(samples)
        stream.waiting += len(samples)
        excess = stream.waiting - self.limits.backlog_samples
        if excess > 0:
            stream.take(excess)
            stream.dropped += excess
            self.stats.dropped_samples += excess

    def restart(self, stream: Stream, reason: str) -> None:
        """A new dialogue on this connection: the audio not yet stepped goes, the state is reset."""
        stream.position += stream.waiting
        stream.backlog.clear()
        stream.waiting = 0
        stream.chunks = 0
        stream.fresh = True
        stream.notices.append({"type": "reset", "chunk": 0, "reason": reason})

    async def run(self) -> None:
        """Step every stream with a whole chunk waiting, `ticks_per_chunk` times per chunk duration,
        until stop()."""
        loop = asyncio.get_running_loop()
        period = self.chunk_seconds / self.ticks_per_chunk
        tick = loop.time() + period
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), max(0.0, tick - loop.time()))
                break
            except TimeoutError:
                pass
            if loop.time() - tick > period:
                self.stats.late_steps += 1
                tick = loop.time()  # no burst of catch-up steps: the backlogs hold the audio meanwhile
            tick += period
            self._flush_notices()  # a reset asked between steps goes out before the new dialogue's replies
            batch = self._gather()
            if batch is None:
                continue
            audio, lengths, resets, planned = batch
            rows = [chunk.stream.row for chunk in planned]
            try:
                result = await loop.run_in_executor(self._executor, self._step, audio, lengths, resets, rows)
            except Exception as error:  # a refused step changes no stream's state (the session is atomic)
                self._refused(planned, error)
                continue
            self._deliver(planned, result)
            self._flush_notices()  # one asked during the step goes out after that step's replies

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _gather(self):
        """The step's inputs: (B, chunk_samples) audio, lengths, reset flags and the planned chunks."""
        limit = self.limits.max_dialogue_frames
        chunk_frames = self.session.chunk
        rows = []
        for stream in self.streams:
            if stream is None or stream.waiting < self.chunk_samples:
                continue
            if limit is not None and (stream.chunks + 1) * chunk_frames > limit:
                self.restart(stream, f"the dialogue reached the server's limit of {limit} model frames")
                continue
            rows.append(stream)
        if not rows:
            return None
        audio = np.zeros((self.capacity, self.chunk_samples), dtype=np.float32)
        lengths = [0] * self.capacity
        resets = [False] * self.capacity
        planned = []
        for stream in rows:
            audio[stream.row] = stream.take(self.chunk_samples)
            lengths[stream.row] = self.chunk_samples
            resets[stream.row], stream.fresh = stream.fresh, False
            planned.append(PlannedChunk(stream, stream.chunks, stream.position, stream.dropped))
            stream.chunks += 1
        return audio, lengths, resets, planned

    @torch.no_grad()
    def _step(self, audio: np.ndarray, lengths: list[int], resets: list[bool], rows: list[int]) -> StepResult:
        """In the worker thread: reset the joining rows, step the session, bring the rows' outputs back."""
        started = time.perf_counter()
        session = self.session
        if any(resets):
            session.reset(torch.tensor(resets))
        output = session.step(torch.from_numpy(audio).to(session.device), lengths=lengths)
        index = torch.tensor(rows, device=session.device)
        tokens = output.raw.feedback if isinstance(output.raw, TokenStep) else None
        pcm = None
        if output.audio is not None:
            pcm = (output.audio.index_select(0, index).float() * 32768.0).round().clamp(-32768, 32767)
            pcm = pcm.to(torch.int16).cpu().numpy()
        speaking = output.speaking.index_select(0, index).float().cpu().numpy()
        tokens = None if tokens is None else tokens.index_select(0, index).cpu().numpy()
        return StepResult(rows, pcm, speaking, tokens, (time.perf_counter() - started) * 1000.0)

    def _deliver(self, planned: list[PlannedChunk], result: StepResult) -> None:
        self.stats.steps += 1
        self.stats.stepped_chunks += len(planned)
        self.stats.step_ms.append(result.milliseconds)
        silence = np.zeros(self.chunk_samples, dtype=np.int16)
        for i, chunk in enumerate(planned):
            if chunk.stream.closed:
                continue  # left while its chunk was stepping (its row may already serve someone else)
            tokens = None if result.tokens is None else [int(t) for t in result.tokens[i]]
            reply = ChunkReply(
                chunk=chunk.chunk, consumed=chunk.consumed, dropped=chunk.dropped,
                speaking=result.speaking[i].tolist(),
                audio=silence if result.audio is None else result.audio[i],
                tokens=tokens, words=self._words(tokens), step_ms=result.milliseconds,
            )  # fmt: skip
            self._send(chunk.stream, reply)

    def _refused(self, planned: list[PlannedChunk], error: Exception) -> None:
        """A step that failed (out of memory, say): its streams hear why and their dialogues start
        afresh; the server goes on stepping the next chunk."""
        self.stats.failed_steps += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"[:300]
        logger.exception("s2s.serve: a step of %d stream(s) failed", len(planned))
        message = f"the model's step failed: {self.stats.last_error}; the dialogue starts afresh"
        for chunk in planned:
            if not chunk.stream.closed:
                chunk.stream.notices.append({"type": "error", "message": message})
                self.restart(chunk.stream, "the previous step failed")
        self._flush_notices()

    def _flush_notices(self) -> None:
        for stream in self.streams:
            if stream is not None and stream.notices:
                for notice in stream.notices:
                    self._send(stream, notice)
                stream.notices.clear()

    def _send(self, stream: Stream, message) -> None:
        try:
            stream.replies.put_nowait(message)
        except asyncio.QueueFull:
            if not stream.overflowed:
                stream.overflowed = True
                self.stats.dropped_connections += 1
                if stream.drop is not None:
                    stream.drop()

    def _words(self, tokens: list[int] | None) -> list[str | None] | None:
        """Per frame the word a token names (None for PAD / BOS / EOS); ids when no vocabulary."""
        if tokens is None:
            return None
        if self.vocabulary is None:
            return [None if t < len(SPECIALS) else str(t) for t in tokens]
        names = self.vocabulary.decode(tokens)
        return [None if t < len(SPECIALS) else name for t, name in zip(tokens, names, strict=True)]


def dialogue_frame_limit(left_chunks: int | None, max_dialogue_seconds: float, frame_rate: float):
    """The frames a dialogue may last before the hub starts it afresh: None with bounded history
    (a ring cache never fills), else the seconds given as whole model frames."""
    if left_chunks is not None or math.isinf(max_dialogue_seconds):
        return None
    return max(1, int(max_dialogue_seconds * frame_rate))
