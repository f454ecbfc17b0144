"""A websocket client of `python -m s2s.serve` that talks like a microphone: it sends a waveform in
real time (or as fast as asked), keeps listening with silence, and records every reply with its
round trip. The tests and scripts/bench_serve.py use it; it is also a starting point for a client
of one's own.

Round trip of a chunk: from when the client sent the message holding the chunk's last user sample
(the reply's `consumed`) to when the reply arrived: the wait for the server's next tick, the step,
and the network both ways.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from s2s.serve.protocol import ChunkReply, encode_audio


@dataclass
class Conversation:
    """What one client sent and got back."""

    hello: dict | None = None
    replies: list[ChunkReply] = field(default_factory=list)
    round_trips_ms: list[float] = field(default_factory=list)
    notices: list[dict] = field(default_factory=list)  # control messages (reset, error)
    sent_samples: int = 0
    close_code: int | None = None
    close_reason: str = ""

    def system_audio(self) -> np.ndarray:
        """The system's audio of every reply, in order, as float32."""
        if not self.replies:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([reply.audio for reply in self.replies]).astype(np.float32) / 32768.0


def speech_like(seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """Voiced bursts with a gliding pitch and pauses between them, float32 in [-1, 1]: a stand-in
    for a talking user (load tests, tests), different for every seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = rng.uniform(100, 180) + 40 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = (np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6)) > -0.3).astype(np.float64)
    return (0.2 * voiced * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


async def talk(
    url: str,
    waveform: np.ndarray,
    *,
    listen_seconds: float = 1.0,
    message_seconds: float = 0.04,
    speed: float = 1.0,
    reset_after_samples: int | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Conversation:
    """Send `waveform` (float32 at the server's rate, in [-1, 1]) to `url`'s websocket in messages of
    `message_seconds`, paced at `speed` x real time, then silence for `listen_seconds`; wait for the
    replies to every whole chunk sent, and return the conversation. `reset_after_samples`: ask for a
    new dialogue once that many samples were sent."""
    own = session is None
    session = session or aiohttp.ClientSession()
    conversation = Conversation()
    try:
        async with session.ws_connect(_ws_url(url), max_msg_size=1 << 24) as socket:
            hello = await socket.receive_json(timeout=30)
            conversation.hello = hello
            if hello.get("type") != "hello":
                conversation.notices.append(hello)
                await _drain(socket, conversation)
                return conversation
            rate = hello["sample_rate"]
            silence = np.zeros(round(listen_seconds * rate), dtype=np.float32)
            audio = np.concatenate([np.asarray(waveform, dtype=np.float32), silence])
            sent_at: list[tuple[int, float]] = []  # (cumulative samples after a message, its send time)
            receiver = asyncio.create_task(_receive(socket, conversation, sent_at))
            step = max(1, round(message_seconds * rate))
            started = time.perf_counter()
            for start in range(0, len(audio), step):
                due = started + start / rate / speed
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                if receiver.done():
                    break  # the server closed the connection
                piece = audio[start : start + step]
                await socket.send_bytes(encode_audio(piece))
                conversation.sent_samples += len(piece)
                sent_at.append((conversation.sent_samples, time.perf_counter()))
                if reset_after_samples is not None and conversation.sent_samples >= reset_after_samples:
                    await socket.send_str('{"type": "reset"}')
                    reset_after_samples = None
            expected = conversation.sent_samples - conversation.sent_samples % hello["chunk_samples"]
            deadline = time.perf_counter() + 10.0 + 4 * hello["chunk_samples"] / rate
            while not receiver.done() and time.perf_counter() < deadline:
                last = conversation.replies[-1].consumed if conversation.replies else 0
                if last >= expected:
                    break
                await asyncio.sleep(0.01)
            await socket.close()
            await receiver
    finally:
        if own:
            await session.close()
    return conversation


async def _receive(socket, conversation: Conversation, sent_at: list[tuple[int, float]]) -> None:
    ends = []  # the cumulative counts of sent_at, kept in step for bisect
    async for message in socket:
        arrived = time.perf_counter()
        if message.type == aiohttp.WSMsgType.BINARY:
            reply = ChunkReply.decode(message.data)
            conversation.replies.append(reply)
            ends.extend(end for end, _ in sent_at[len(ends) :])
            index = bisect.bisect_left(ends, reply.consumed)
            if index < len(ends):
                conversation.round_trips_ms.append((arrived - sent_at[index][1]) * 1000.0)
        elif message.type == aiohttp.WSMsgType.TEXT:
            conversation.notices.append(message.json())
    conversation.close_code = socket.close_code
    extra = socket.exception()
    conversation.close_reason = "" if extra is None else str(extra)


async def _drain(socket, conversation: Conversation) -> None:
    async for message in socket:
        if message.type == aiohttp.WSMsgType.TEXT:
            conversation.notices.append(message.json())
    conversation.close_code = socket.close_code


def _ws_url(url: str) -> str:
    """http://host:port/ -> ws://host:port/ws (a ws:// URL is used as it is)."""
    if url.startswith(("ws://", "wss://")):
        return url
    base = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return base.rstrip("/") + "/ws"
