"""StreamingSession: chunk-by-chunk output equals the offline pass; batched streams equal separate
sessions; bounded caches; bad input named."""

import dataclasses

import pytest
import torch

from s2s.data.features import LogMel
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.streaming.session import ENGINES, StreamingSession

CONFIG = DuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)


def _model(seed: int) -> DuplexModel:
    torch.manual_seed(seed)
    return DuplexModel(CONFIG).eval()


def _dialogue(samples: int, generator: torch.Generator) -> torch.Tensor:
    """Noise bursts with silences, loud enough for every frame to matter."""
    envelope = (torch.rand(samples // 1600 + 1, generator=generator) > 0.4).float().repeat_interleave(1600)
    return 0.2 * torch.randn(samples, generator=generator) * envelope[:samples]


def _stream(session: StreamingSession, audio: torch.Tensor):
    """Feed one dialogue (1-D) to a batch-1 session; returns concatenated mel, speaking, feedback."""
    size = session.chunk_samples
    outputs = []
    for start in range(0, audio.shape[0], size):
        piece = audio[start : start + size]
        last = start + size >= audio.shape[0]
        padded = torch.nn.functional.pad(piece, (0, size - piece.shape[0]))
        outputs.append(session.step(padded, lengths=torch.tensor([piece.shape[0]]), final=last))
    return (
        torch.cat([o.mel for o in outputs], dim=1),
        torch.cat([o.speaking for o in outputs], dim=1),
        torch.cat([o.raw.feedback for o in outputs], dim=1),
        outputs,
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("left_chunks", [None, 2])
@pytest.mark.parametrize("chunk", [1, 2, 4, 8])
def test_streaming_equals_offline(chunk, left_chunks, engine, generator):
    model = _model(int(torch.randint(1000, (1,), generator=generator)))
    audio = _dialogue(16000 * 3 + 1234, generator)  # 76 model frames: the last chunk is short
    frames = (audio.shape[0] // 160) // 4
    session = StreamingSession(model, chunk=chunk, left_chunks=left_chunks, vocoder=False, engine=engine)
    mel, speaking, feedback, outputs = _stream(session, audio)
    assert sum(int(o.frames) for o in outputs) == frames
    with torch.no_grad():
        offline = model(LogMel()(audio[None]), feedback[:, :frames], chunk=chunk, left_chunks=left_chunks)
    assert offline.mel.shape == (1, frames * 4, 80) and torch.isfinite(mel).all()
    mel_error = (offline.mel - mel[:, : frames * 4]).abs().max().item()
    speaking_error = (offline.speaking - speaking[:, :frames]).abs().max().item()
    assert mel_error <= 1e-4 and speaking_error <= 1e-4, (mel_error, speaking_error)
    # The comparison can fail: the offline pass with another chunk size is far off.
    with torch.no_grad():
        other = model(LogMel()(audio[None]), feedback[:, :frames], chunk=chunk + 1, left_chunks=left_chunks)
    assert (other.mel - mel[:, : frames * 4]).abs().max() > 1e-2


@pytest.mark.parametrize("engine", ENGINES)
def test_batched_streams_equal_separate_sessions(engine, generator):
    model = _model(3)
    lengths = [16000 * 2 + 700, 16000 * 1 + 320, 16000 * 3]
    dialogues = [_dialogue(n, generator) for n in lengths]
    alone = [
        _stream(StreamingSession(model, chunk=4, left_chunks=3, vocoder=False, engine=engine), d)
        for d in dialogues
    ]

    session = StreamingSession(model, batch=3, chunk=4, left_chunks=3, vocoder=False, engine=engine)
    size = session.chunk_samples
    mels = [[] for _ in dialogues]
    for start in range(0, max(lengths), size):
        pieces = [d[start : start + size] for d in dialogues]
        counts = torch.tensor([p.shape[0] for p in pieces])
        batch = torch.stack([torch.nn.functional.pad(p, (0, size - p.shape[0])) for p in pieces])
        final = torch.tensor([start + size >= n for n in lengths])
        out = session.step(batch, lengths=counts, final=final)
        for row in range(3):
            if counts[row] > 0:
                mels[row].append(out.mel[row, : int(out.frames[row]) * 4])
    for row, (mel_alone, *_rest) in enumerate(alone):
        frames = (lengths[row] // 160) // 4
        batched = torch.cat(mels[row])
        assert batched.shape[0] == frames * 4
        # Each stream attends only its own rows (the static engine) or its own packed keys; what
        # remains is the last bits of fp32 matmuls, where the CPU's BLAS picks its kernel by the
        # number of rows (MKL sgemm with torch 2.14: 3 rows and 1 row differ by ~4e-6 here), so
        # the bound is 1e-5, far below what reading another stream would give.
        error = (batched - mel_alone[0, : frames * 4]).abs().max().item()
        assert error <= 1e-5, (
            f"seed {generator.initial_seed()}, {engine}: stream {row} depends on its batch "
            f"(max difference {error:.2e})"
        )


def test_reset_starts_a_new_dialogue_on_one_row(generator):
    model = _model(4)
    length = 1280 * 12
    first, second, other = (_dialogue(length, generator) for _ in range(3))
    session = StreamingSession(model, batch=2, chunk=2, vocoder=False)
    size = session.chunk_samples
    for start in range(0, length, size):
        session.step(torch.stack([first[start : start + size], other[start : start + size]]))
    session.reset(torch.tensor([True, False]))
    fresh = StreamingSession(model, chunk=2, vocoder=False)
    for start in range(0, length, size):
        out = session.step(torch.stack([second[start : start + size], other[start : start + size]]))
        expected = fresh.step(second[start : start + size])
        torch.testing.assert_close(out.mel[0], expected.mel[0], atol=1e-5, rtol=0)


def test_left_chunks_bound_every_cache_over_a_long_stream(generator):
    model = _model(5)
    chunk, left = 2, 3
    session = StreamingSession(model, chunk=chunk, left_chunks=left, vocoder=False, engine="packed")
    audio = _dialogue(session.chunk_samples * 150, generator)  # 12 s, 150 steps
    held, capacity = [], []
    for start in range(0, audio.shape[0], session.chunk_samples):
        session.step(audio[start : start + session.chunk_samples])
        held.append(max(int(c.store.lengths.max()) for c in session.state.caches.all()))
        capacity.append(max(c.store.capacity for c in session.state.caches.all()))
    assert max(held) <= (left + 1) * chunk and max(capacity) <= (left + 2) * chunk
    assert held[-1] == held[50]  # flat after warm-up, not growing with the stream
    unbounded = StreamingSession(model, chunk=chunk, left_chunks=None, vocoder=False, engine="packed")
    for start in range(0, audio.shape[0], session.chunk_samples):
        unbounded.step(audio[start : start + session.chunk_samples])
    assert max(int(c.store.lengths.max()) for c in unbounded.state.caches.all()) == 300


def test_the_static_engine_holds_fixed_storage(generator):
    """With left_chunks every static cache is a ring of (left + 1) chunks, mirrored, allocated once:
    the same storage from the first step to the last. Without, a linear cache of the configured
    history; a longer stream is refused with the fix, or grows (copied once per doubling)."""
    model = _model(5)
    chunk, left = 2, 3
    session = StreamingSession(model, chunk=chunk, left_chunks=left, vocoder=False)
    audio = _dialogue(session.chunk_samples * 150, generator)  # 12 s, 150 steps
    storage = [c.keys.data_ptr() for c in session.state.caches.all()]
    for start in range(0, audio.shape[0], session.chunk_samples):
        session.step(audio[start : start + session.chunk_samples])
    assert [c.keys.data_ptr() for c in session.state.caches.all()] == storage
    assert {c.keys.shape[1] for c in session.state.caches.all()} == {2 * (left + 1) * chunk}
    assert {int(c.key_frames) for c in session.state.caches.all()} == {300}
    limited = StreamingSession(model, chunk=chunk, left_chunks=None, vocoder=False, max_history_frames=20)
    for start in range(0, 10 * limited.chunk_samples, limited.chunk_samples):
        limited.step(audio[start : start + limited.chunk_samples])
    with pytest.raises(ValueError, match=r"stream\(s\) \[0\] would pass max_history_frames=20"):
        limited.step(audio[: limited.chunk_samples])
    growing = StreamingSession(model, chunk=chunk, left_chunks=None, vocoder=False)
    assert {c.capacity for c in growing.state.caches.all()} == {1500}


def test_bad_input_is_named(generator):
    model = _model(6)
    session = StreamingSession(model, batch=2, chunk=4, vocoder=False)
    good = torch.zeros(2, session.chunk_samples)
    with pytest.raises(ValueError, match="streams 16000 Hz audio but got 44100 Hz"):
        session.step(good, sample_rate=44100)
    with pytest.raises(ValueError, match="mono: one channel per stream"):
        session.step(torch.zeros(2, 2, session.chunk_samples))
    with pytest.raises(ValueError, match="exactly 2560 samples per stream"):
        session.step(torch.zeros(2, 2000))
    with pytest.raises(TypeError, match="float tensor"):
        session.step(torch.zeros(2, session.chunk_samples, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"stream\(s\) \[1\] got less than a whole chunk without final=True"):
        session.step(good, lengths=torch.tensor([2560, 1280]))
    with pytest.raises(ValueError, match=r"bool tensor with one flag per stream \(2,\)"):
        session.step(good, lengths=torch.tensor([2560, 1280]), final=torch.tensor([0, 1]))
    session.step(good, lengths=torch.tensor([2560, 1280]), final=torch.tensor([False, True]))
    with pytest.raises(ValueError, match="reset"):
        session.step(good)
    with pytest.warns(UserWarning, match=r"chunk size\(s\) \[3\] were not among the training chunk sizes"):
        StreamingSession(model, chunk=3, vocoder=False)


def test_session_returns_audio_for_each_chunk(generator):
    model = _model(7)
    session = StreamingSession(model, chunk=4)
    out = session.step(_dialogue(session.chunk_samples, generator))
    assert out.audio.shape == (1, session.chunk_samples) and torch.isfinite(out.audio).all()
    assert out.mel.shape == (1, 16, 80) and out.speaking.shape == (1, 4)
    assert ((out.speaking >= 0) & (out.speaking <= 1)).all()


def test_reset_by_indices_resets_exactly_those_streams(generator):
    """reset(torch.tensor([0, 1])) starts new dialogues on streams 0 and 1 (not on stream 1 alone,
    as reading the indices as flags did) and leaves stream 2 as it was; a refused selection changes
    nothing."""
    model = _model(7)
    length = 1280 * 6
    audio = [_dialogue(length, generator) for _ in range(3)]
    session = StreamingSession(model, batch=3, chunk=2, vocoder=False)
    size = session.chunk_samples
    for start in range(0, length, size):
        session.step(torch.stack([a[start : start + size] for a in audio]))
    untouched = StreamingSession(model, batch=3, chunk=2, vocoder=False)
    for start in range(0, length, size):
        untouched.step(torch.stack([a[start : start + size] for a in audio]))
    with pytest.raises(ValueError, match="outside"):
        session.reset([0, 3])
    session.reset(torch.tensor([0, 1]))
    fresh = StreamingSession(model, batch=3, chunk=2, vocoder=False)
    for start in range(0, length, size):
        chunk = torch.stack([a[start : start + size] for a in audio])
        out, expected_fresh, expected_old = session.step(chunk), fresh.step(chunk), untouched.step(chunk)
        for row in (0, 1):
            torch.testing.assert_close(out.mel[row], expected_fresh.mel[row], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.mel[2], expected_old.mel[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_nan_stream_sits_the_step_out_and_never_reaches_the_others(engine, generator):
    """Stream 1 sends NaN / inf in one chunk: it is flagged in `invalid_input`, the other streams'
    outputs are bit-identical to a run where stream 1 was idle in that step, every output of theirs is
    finite, and stream 1 carries on afterwards as if it had skipped the chunk."""
    model = _model(8)
    length = 1280 * 8
    audio = [_dialogue(length, generator) for _ in range(3)]
    poisoned = StreamingSession(model, batch=3, chunk=2, vocoder=False, engine=engine)
    idle = StreamingSession(model, batch=3, chunk=2, vocoder=False, engine=engine)
    size = poisoned.chunk_samples
    for step, start in enumerate(range(0, length, size)):
        chunk = torch.stack([a[start : start + size] for a in audio])
        bad, lengths = chunk.clone(), None
        if step == 2:
            bad[1, 100] = float("nan")
            bad[1, 7] = float("inf")
            lengths = torch.tensor([size, 0, size])
        out, expected = poisoned.step(bad), idle.step(chunk, lengths=lengths)
        assert out.invalid_input.tolist() == [False, step == 2, False], step
        assert torch.isfinite(out.mel).all() and torch.isfinite(out.speaking).all(), step
        assert torch.equal(out.mel, expected.mel) and torch.equal(out.speaking, expected.speaking), step
        assert out.frames.tolist() == expected.frames.tolist(), step


@pytest.mark.parametrize("engine", ENGINES)
def test_a_step_that_fails_half_way_changes_nothing(engine, generator, monkeypatch):
    """The decoder fails after the encoder has appended its K/V to the cross-attention caches: every
    cache is back where it was, and the next steps equal a session that never saw the failed one."""
    model = _model(9)
    length = 1280 * 6
    audio = _dialogue(length, generator)
    session = StreamingSession(model, chunk=2, vocoder=False, engine=engine)
    clean = StreamingSession(model, chunk=2, vocoder=False, engine=engine)
    size = session.chunk_samples
    chunks = [audio[start : start + size] for start in range(0, length, size)]
    for chunk in chunks[:2]:
        session.step(chunk)
        clean.step(chunk)

    def held(s):
        if engine == "static":
            return [(c.key_frames.tolist(), c.query_frames.tolist()) for c in s.state.caches.all()]
        return [(c.store.lengths.tolist(), c.queries.positions.tolist()) for c in s.state.caches.all()]

    before = held(session)

    def failing_norm(*args, **kwargs):
        raise RuntimeError("the decoder failed")

    # the decoder's last operation: every decoder layer has written its caches before it fails
    monkeypatch.setattr(model.decoder.norm, "forward", failing_norm)
    with pytest.raises(RuntimeError, match="the decoder failed"):
        session.step(chunks[2])
    assert held(session) == before
    assert held(session) == held(clean)
    monkeypatch.undo()
    for chunk in chunks[2:]:
        out, expected = session.step(chunk), clean.step(chunk)
        assert torch.equal(out.mel, expected.mel)


def test_non_finite_padding_after_a_short_final_chunk_is_not_an_invalid_stream(generator):
    """NaN only in the padding past a stream's real samples (its short final chunk): the stream is
    not flagged, its real frames count, and the output equals the same chunk padded with zeros."""
    model = _model(10)
    session = StreamingSession(model, batch=2, chunk=2, vocoder=False)
    zeros = StreamingSession(model, batch=2, chunk=2, vocoder=False)
    size, frame = session.chunk_samples, model.config.frame_samples
    audio = torch.stack([_dialogue(size, generator) for _ in range(2)])
    lengths = torch.tensor([size, frame])  # stream 1: one real frame, then padding
    padded = audio.clone()
    padded[1, frame:] = 0.0
    poisoned = padded.clone()
    poisoned[1, frame + 5] = float("nan")
    final = torch.tensor([False, True])
    out = session.step(poisoned, lengths=lengths, final=final)
    expected = zeros.step(padded, lengths=lengths, final=final)
    assert out.invalid_input.tolist() == [False, False] and out.frames.tolist() == [2, 1]
    assert torch.equal(out.mel, expected.mel) and torch.isfinite(out.mel).all()


def test_a_cute_model_on_the_cpu_is_refused_by_name_and_keeps_its_state(generator):
    """The static engine reads its caches through the model's own backend (the CuTe kernel takes the
    padded layout): on the CPU a CuTe model is refused by name, as its offline pass is, and the
    refused step leaves the session where it was."""
    torch.manual_seed(11)
    cute_model = DuplexModel(dataclasses.replace(CONFIG, attention_backend="cute")).eval()
    session = StreamingSession(cute_model, chunk=2, vocoder=False)
    audio = _dialogue(session.chunk_samples, generator)
    with pytest.raises(NotImplementedError, match="backend 'cute' cannot run this call"):
        session.step(audio)
    assert int(session.state.positions) == 0
    assert all(int(c.key_frames) == 0 and int(c.query_frames) == 0 for c in session.state.caches.all())
