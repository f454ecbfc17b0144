"""The wire format between `python -m s2s.serve` and its clients (the page, tests, the load test).

One websocket per dialogue, at `/ws`. Everything is little-endian; audio is mono 16-bit PCM at the
model's sample rate (16 kHz), both ways.

Server -> client, text, once on connect (`hello`):
    {"type": "hello", "format": "s2s-serve/1", "sample_rate": 16000, "chunk_samples": 2560,
     "chunk_frames": 4, "frame_seconds": 0.04, "max_message_bytes": 32000, "backlog_samples": ...,
     "model": "...", "stream": 3}
  or, when every stream is taken, an `error` message and a close with code 1013 (try again later).

Client -> server:
    binary  int16 PCM of the user's microphone, any whole number of samples from 1 to
            max_message_bytes / 2 per message. An odd byte count, an empty or oversized message
            closes that connection (code 1003 / 1009) with the reason.
    text    {"type": "reset"}: start a new dialogue on this connection (the model's state and the
            audio not yet stepped are dropped; answered by {"type": "reset", "chunk": 0}).
            Anything else closes the connection (1003).

Server -> client, binary, one per chunk the model stepped for this stream (`ChunkReply`):
    uint32 header length H | H bytes of UTF-8 JSON header | int16 PCM of the system's audio
    header: {"chunk": k (0, 1, ... since the dialogue began), "consumed": user samples stepped so far
             on this connection (received order, resets included: the client times its round trip
             from when it sent sample `consumed`), "dropped": user samples discarded so far because
             the backlog overflowed, "speaking": [frame probabilities], "tokens": [ids] | null,
             "words": [names] | null, "step_ms": the batched step's duration}

The server's clock steps every stream that has a whole chunk of audio waiting, once per chunk
duration; a stream with less waits (it is idle that step, its state untouched). Audio beyond
`backlog_samples` is dropped oldest first and counted, so a bursty client cannot queue without
bound, and a client that does not read its replies is closed once `max_pending_replies` are queued.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

FORMAT = "s2s-serve/1"
HEADER_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20
RESET = '{"type": "reset"}'


class ProtocolError(ValueError):
    """A client message the server refuses; `close_code` is the websocket close code to send."""

    def __init__(self, message: str, close_code: int = 1003):
        super().__init__(message)
        self.close_code = close_code


@dataclass(frozen=True)
class ChunkReply:
    """What the server sends back for one stepped chunk of one stream."""

    chunk: int
    consumed: int
    dropped: int
    speaking: list[float]
    audio: np.ndarray  # (samples,) int16
    tokens: list[int] | None = None
    words: list[str] | None = None
    step_ms: float = 0.0

    def encode(self) -> bytes:
        header = {
            "chunk": self.chunk, "consumed": self.consumed, "dropped": self.dropped,
            "speaking": [round(float(p), 4) for p in self.speaking], "tokens": self.tokens,
            "words": self.words, "step_ms": round(self.step_ms, 3),
        }  # fmt: skip
        text = json.dumps(header, ensure_ascii=False).encode("utf-8")
        pcm = np.ascontiguousarray(self.audio, dtype="<i2").tobytes()
        return HEADER_LENGTH.pack(len(text)) + text + pcm

    @staticmethod
    def decode(message: bytes) -> ChunkReply:
        if len(message) < HEADER_LENGTH.size:
            raise ProtocolError(f"a chunk reply starts with a 4-byte header length, got {len(message)} bytes")
        (length,) = HEADER_LENGTH.unpack_from(message)
        end = HEADER_LENGTH.size + length
        if length > MAX_HEADER_BYTES or end > len(message) or (len(message) - end) % 2:
            raise ProtocolError(f"malformed chunk reply: a {length}-byte header in {len(message)} bytes")
        header = json.loads(message[HEADER_LENGTH.size : end].decode("utf-8"))
        audio = np.frombuffer(message, dtype="<i2", offset=end).astype(np.int16)
        return ChunkReply(
            chunk=int(header["chunk"]), consumed=int(header["consumed"]), dropped=int(header["dropped"]),
            speaking=list(header["speaking"]), audio=audio, tokens=header.get("tokens"),
            words=header.get("words"), step_ms=float(header.get("step_ms", 0.0)),
        )  # fmt: skip


def decode_audio(message: bytes, max_message_bytes: int) -> np.ndarray:
    """A client's binary message as float32 samples in [-1, 1), or ProtocolError naming the problem."""
    if len(message) == 0:
        raise ProtocolError("empty audio message: send int16 PCM samples (at least one)")
    if len(message) > max_message_bytes:
        raise ProtocolError(
            f"audio message of {len(message)} bytes is over the limit of {max_message_bytes} "
            f"({max_message_bytes // 2} samples): send shorter pieces",
            close_code=1009,
        )
    if len(message) % 2:
        raise ProtocolError(f"audio message of {len(message)} bytes is not whole int16 samples (2 bytes)")
    return np.frombuffer(message, dtype="<i2").astype(np.float32) / 32768.0


def encode_audio(samples) -> bytes:
    """float samples in [-1, 1] as the int16 PCM bytes both sides send (x 32768, rounded, clipped:
    the inverse of decode_audio's / 32768)."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767)
    return pcm.astype("<i2").tobytes()


def decode_control(text: str) -> dict:
    """A client's text message: only {"type": "reset"} is understood."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"text messages must be JSON ({error.msg}); the only one is {RESET}") from None
    if not isinstance(message, dict) or message.get("type") != "reset":
        raise ProtocolError(f"unknown control message {text[:80]!r}; the only one is {RESET}")
    return message
