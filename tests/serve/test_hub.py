"""ServeHub between steps and during one: a chunk's reply goes to the connection that sent its audio
(not to a newcomer on the same row), numbered as it was taken; a reset asked while a step runs is
announced after that step's reply; a backlog drops its oldest audio past its limit."""

import asyncio

import numpy as np
import pytest

from s2s.serve.protocol import ChunkReply
from s2s.serve.server import ServeOptions, build_hub


@pytest.fixture
def hub(tiny_artifact):
    built, _ = build_hub(ServeOptions(model=str(tiny_artifact), port=0, max_connections=2))
    yield built
    built.close()


def _feed(hub, stream, chunks: int, seed: int):
    rng = np.random.default_rng(seed)
    hub.receive(stream, (0.1 * rng.standard_normal(chunks * hub.chunk_samples)).astype(np.float32))


def _step(hub):
    audio, lengths, resets, planned = hub._gather()
    return planned, hub._step(audio, lengths, resets, [p.stream.row for p in planned])


def _queued(stream) -> list:
    items = []
    while not stream.replies.empty():
        items.append(stream.replies.get_nowait())
    return items


def test_a_reply_goes_to_the_connection_that_sent_the_audio_not_a_newcomer_on_its_row(hub):
    first = hub.join()
    _feed(hub, first, 1, seed=1)
    audio, lengths, resets, planned = hub._gather()
    hub.leave(first)  # it hangs up while its chunk is stepping
    newcomer = hub.join()
    assert newcomer.row == first.row and newcomer is not first
    hub._deliver(planned, hub._step(audio, lengths, resets, [first.row]))
    assert _queued(newcomer) == [] and _queued(first) == []


def test_a_reset_during_a_step_is_announced_after_that_steps_reply_and_numbering_restarts(hub):
    stream = hub.join()
    _feed(hub, stream, 3, seed=2)
    hub._deliver(*_step(hub))
    audio, lengths, resets, planned = hub._gather()
    hub.restart(stream, "asked")  # arrives while chunk 1 is stepping: the rest of the backlog goes
    hub._deliver(planned, hub._step(audio, lengths, resets, [stream.row]))
    hub._flush_notices()
    _feed(hub, stream, 1, seed=3)
    assert stream.fresh, "the row is reset before the new dialogue's first step"
    planned, result = _step(hub)
    assert result is not None and planned[0].chunk == 0
    hub._deliver(planned, result)
    items = _queued(stream)
    kinds = [("reply", i.chunk) if isinstance(i, ChunkReply) else ("notice", i["type"]) for i in items]
    assert kinds == [("reply", 0), ("reply", 1), ("notice", "reset"), ("reply", 0)], kinds
    size = hub.chunk_samples
    assert [i.consumed for i in items if isinstance(i, ChunkReply)] == [size, 2 * size, 4 * size]


def test_a_backlog_past_its_limit_drops_the_oldest_audio_and_counts_it(hub):
    stream = hub.join()
    limit = hub.limits.backlog_samples
    samples = np.arange(limit + 1000, dtype=np.float32)
    hub.receive(stream, samples)
    assert stream.waiting == limit and stream.dropped == 1000 and stream.position == 1000
    assert stream.take(5).tolist() == samples[1000:1005].tolist()
    assert hub.stats.dropped_samples == 1000


def test_a_failed_step_tells_its_streams_restarts_them_and_the_clock_goes_on(hub, monkeypatch):
    stream = hub.join()
    _feed(hub, stream, 3, seed=5)
    failing = {"left": 1}
    real_step = hub._step

    def step(*args):
        if failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("CUDA out of memory (a stand-in)")
        return real_step(*args)

    monkeypatch.setattr(hub, "_step", step)

    async def two_ticks():
        hub.chunk_seconds = 0.01
        runner = asyncio.create_task(hub.run())
        fed = False
        while hub.stats.steps < 1:  # the failed step, then the next chunk's (fed after the restart)
            if hub.stats.failed_steps and not fed:
                _feed(hub, stream, 1, seed=6)
                fed = True
            await asyncio.sleep(0.005)
        hub.stop()
        await runner

    asyncio.run(two_ticks())
    items = _queued(stream)
    kinds = [i.chunk if isinstance(i, ChunkReply) else i["type"] for i in items]
    assert kinds == ["error", "reset", 0], kinds
    assert "out of memory" in items[0]["message"] and hub.stats.failed_steps == 1
