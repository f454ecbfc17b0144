"""Streaming history in seconds -> left_chunks: the largest window that fits, against integer
millisecond arithmetic, and the settings that cannot be met refused by name."""

import math

import pytest
import torch

from s2s.streaming.history import history_of, left_chunks_for_history, resolve_left_chunks, tighter


def test_left_chunks_is_the_largest_window_within_the_history(generator):
    seed = generator.initial_seed()
    for _ in range(200):
        chunk_ms = (
            int(torch.randint(10, 400, (1,), generator=generator)) // 10 * 10
        )  # 10 ms steps, as frames are
        chunk_seconds = chunk_ms / 1000
        history = float(torch.randint(chunk_ms, 90_000, (1,), generator=generator)) / 1000
        # exact in integer milliseconds: the most chunks (current one included) within the history
        chunks = round(history * 1000) // chunk_ms
        left = left_chunks_for_history(history, chunk_seconds)
        assert left == chunks - 1, f"seed {seed}: {history} s at {chunk_ms} ms -> {left}, want {chunks - 1}"
        assert history_of(left, chunk_seconds) <= history + 1e-9, seed
        assert history_of(left + 1, chunk_seconds) > history, seed
    assert left_chunks_for_history(40.0, 0.16) == 249  # 40 / 0.16 is 249.99999999999997 in floats
    assert left_chunks_for_history(0.16, 0.16) == 0 and history_of(249, 0.16) == pytest.approx(40.0)
    assert left_chunks_for_history(math.inf, 0.16) is None and history_of(None, 0.16) == math.inf


def test_impossible_histories_are_refused():
    with pytest.raises(ValueError, match="shorter than one chunk"):
        left_chunks_for_history(0.1, 0.16)
    for bad in (0.0, -1.0, float("nan"), -math.inf):
        with pytest.raises(ValueError, match="history_seconds must be > 0"):
            left_chunks_for_history(bad, 0.16)
    with pytest.raises(ValueError, match="chunk_seconds"):
        left_chunks_for_history(10.0, 0.0)


def test_the_validated_history_never_reaches_past_the_models_own_limit():
    """A run validated with 40 s streams a model trained with left_chunks 16 (bounded_history) with
    16, not 249; an unbounded model with 249; a history given explicitly is taken as given; without
    either, the model's own."""
    assert resolve_left_chunks(16, 0.16, None, 40.0) == (16, "the run's free-running validation")
    assert resolve_left_chunks(None, 0.16, None, 40.0) == (249, "the run's free-running validation")
    assert resolve_left_chunks(300, 0.16, None, 40.0)[0] == 249
    assert resolve_left_chunks(16, 0.16, 40.0, 40.0) == (249, "given")
    assert resolve_left_chunks(16, 0.16) == (16, "the model's")
    assert (
        tighter(None, None) is None and tighter(None, 3) == 3 and tighter(5, None) == 5 and tighter(5, 3) == 3
    )
