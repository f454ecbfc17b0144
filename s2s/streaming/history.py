"""How far back a stream's attention reaches, in seconds, and the `left_chunks` that gives it.

A model trained on windows of W seconds has never attended to more than W seconds of history; a
dialogue streamed for longer hands every layer keys further back than any it learned from (the
base model missed 12-16% of the turns ending past 40 s against 5-11% before, docs/results.md).
Streaming with at most W seconds of history keeps every query inside what training showed it, the
way a sliding window does (WeNet's `num_decoding_left_chunks`).

The limit is in seconds because `left_chunks` counts chunks of the streaming chunk size: 249 chunks
are 40 s at 160 ms and 10 s at 40 ms.
"""

from __future__ import annotations

import math


def left_chunks_for_history(history_seconds: float, chunk_seconds: float) -> int | None:
    """The `left_chunks` whose window (the current chunk and the ones before it) spans at most
    `history_seconds`; None (unlimited) for an infinite history."""
    if not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
    if math.isinf(history_seconds) and history_seconds > 0:
        return None
    if not history_seconds > 0:
        raise ValueError(f"history_seconds must be > 0 (or inf for unlimited history), got {history_seconds}")
    chunks = math.floor(history_seconds / chunk_seconds + 1e-9)  # 40 / 0.16 is 249.99999...
    if chunks < 1:
        raise ValueError(
            f"history_seconds={history_seconds} is shorter than one chunk ({chunk_seconds * 1000:.0f} ms): "
            "a query always sees its own chunk; give at least the chunk's length"
        )
    return chunks - 1


def history_of(left_chunks: int | None, chunk_seconds: float) -> float:
    """The seconds of history `left_chunks` leaves at this chunk size (inf when unlimited)."""
    return math.inf if left_chunks is None else (left_chunks + 1) * chunk_seconds


def resolve_left_chunks(
    model_left_chunks: int | None,
    chunk_seconds: float,
    given_seconds: float | None = None,
    validated_seconds: float | None = None,
) -> tuple[int | None, str]:
    """The left_chunks to stream with and where it came from: a given history, else the one the
    run's checkpoint was chosen with (free-running validation; never more than the model's own
    left_chunks, which training used), else the model's own left_chunks."""
    if given_seconds is not None:
        return left_chunks_for_history(given_seconds, chunk_seconds), "given"
    if validated_seconds is not None:
        validated = tighter(left_chunks_for_history(validated_seconds, chunk_seconds), model_left_chunks)
        return validated, "the run's free-running validation"
    return model_left_chunks, "the model's"


def tighter(left_chunks: int | None, other: int | None) -> int | None:
    """The shorter of two histories in chunks (None: unlimited)."""
    if left_chunks is None or other is None:
        return other if left_chunks is None else left_chunks
    return min(left_chunks, other)
