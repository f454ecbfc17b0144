"""The static engine's step replayed as a CUDA graph (`cuda_graph=True`) gives what the same session
gives eagerly: steps with idle, short-final and NaN streams, streams reset mid-way (joining without
a recapture), a cache that grows (a recapture), and outputs that the next replay leaves alone.

On the CPU the same runner is driven without CUDA (`EagerGraph`: its "replay" runs the recorded
body eagerly): what a graph relies on, that every step reads and writes the same carried tensors,
and that the write-back and `reset` keep the session equal to an eager one, is checked there too."""

import dataclasses

import pytest
import torch

import s2s.streaming.session as session_module
from s2s.data.tokens import BOS, EOS
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig
from s2s.streaming.step_graph import StepGraph, _copy_leaves, cloned, tensor_leaves
from s2s.streaming.token_session import TokenStreamingSession

CUDA = torch.cuda.is_available()
CONFIG = TokenDuplexConfig(dim=128, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)
STREAMS = 3


def _model(seed: int, dtype: torch.dtype, device: str = "cuda") -> TokenDuplexModel:
    torch.manual_seed(seed)
    model = TokenDuplexModel(dataclasses.replace(CONFIG, dropout=0.0)).eval()
    with torch.no_grad():
        model.token_head.bias[BOS] += 2.0  # replies start and end within a few chunks
        model.token_head.bias[EOS] += 1.0
    return model.to(device=device, dtype=dtype)


class EagerGraph(StepGraph):
    """The graph runner without CUDA: the warm-up and its undoing run as on a GPU, "capture" records
    nothing, and each replay runs the body the graph would have recorded."""

    def _capture(self, warmup_steps: int) -> None:
        saved = [t.clone() for t in self.carried]
        for _ in range(warmup_steps):
            self._body()
            _copy_leaves(self.carried, saved)

    def _load(self, audio, host_values) -> None:
        self.audio.copy_(audio)
        self.values.copy_(host_values)

    def _run(self) -> None:
        self.output = self._body()


def _sessions(model, left_chunks, **kwargs):
    sampling = SamplingConfig(state_gain=4.0, stop_gain=4.0)
    make = lambda graph: TokenStreamingSession(
        model, batch=STREAMS, chunk=2, left_chunks=left_chunks, sampling=sampling, cuda_graph=graph, **kwargs
    )
    return make(False), make(True)


def _script(size: int, generator: torch.Generator):
    """(audio, lengths, final, reset-before) per step: every stream busy, one idle, one NaN chunk,
    a short final step on stream 2, then stream 2 reset and fed again."""
    steps = []
    for index in range(9):
        audio = 0.2 * torch.randn(STREAMS, size, generator=generator)
        lengths, final, reset = [size] * STREAMS, [False] * STREAMS, None
        if index == 3:
            lengths[1] = 0  # idle
        if index == 4:
            audio[0, 17] = float("nan")  # stream 0 sits this step out
        if index == 5:
            lengths[2], final[2] = size // 2 + 3, True
        if index == 6:
            lengths[2] = 0  # ended: idle until reset
        if index == 7:
            reset = [2]
        steps.append((audio, lengths, final, reset))
    return steps


def _run(session, steps, after_step=None):
    outputs = []
    for audio, lengths, final, reset in steps:
        if reset is not None:
            session.reset(reset)
        outputs.append(session.step(audio.to(session.device), lengths=lengths, final=final))
        if after_step is not None:
            after_step(session)
    return outputs


def _eager_graph_session(model, left_chunks, monkeypatch, **kwargs):
    """A static session whose steps go through EagerGraph (the session refuses cuda_graph=True
    on the CPU, so the flag is set after construction)."""
    monkeypatch.setattr(session_module, "StepGraph", EagerGraph)
    sampling = SamplingConfig(state_gain=4.0, stop_gain=4.0)
    session = TokenStreamingSession(
        model, batch=STREAMS, chunk=2, left_chunks=left_chunks, sampling=sampling, **kwargs
    )
    session.cuda_graph = True
    return session


@pytest.mark.parametrize("left_chunks", [None, 2])
def test_the_graph_runner_keeps_one_set_of_carried_tensors_and_the_eager_results(
    left_chunks, generator, monkeypatch
):
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    model = _model(seed, torch.float32, "cpu")
    history = {"max_history_frames": 64} if left_chunks is None else {}
    eager = TokenStreamingSession(
        model, batch=STREAMS, chunk=2, left_chunks=left_chunks,
        sampling=SamplingConfig(state_gain=4.0, stop_gain=4.0), **history,
    )  # fmt: skip
    graph = _eager_graph_session(model, left_chunks, monkeypatch, **history)
    steps = _script(eager.chunk_samples, generator)
    addresses = []

    def same_tensors(session):
        runner = session._graph
        assert isinstance(runner, EagerGraph), f"seed {seed}: the session did not take the graph path"
        carried = session.carried_tensors()
        assert all(a is b for a, b in zip(carried, runner.carried, strict=True)), (
            f"seed {seed}: a step left the session on tensors the graph does not read"
        )
        addresses.append([t.data_ptr() for t in carried])

    want = _run(eager, steps)
    got = _run(graph, steps, after_step=same_tensors)
    assert all(a == addresses[0] for a in addresses), f"seed {seed}: the carried tensors moved"
    caches = graph.state.caches.all()
    shared = {id(t) for c in caches for t in (c.key_frames, c.query_frames)}
    assert len(shared) == 2, (
        f"seed {seed}: the {len(caches)} caches carry {len(shared)} frame counters, not one pair"
    )
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        for a, b in zip(tensor_leaves(w), tensor_leaves(g), strict=True):
            assert torch.equal(a, b), f"seed {seed}, step {index}: the graph runner differs from eager"
    assert torch.equal(graph.state.positions, eager.state.positions), f"seed {seed}"


def test_the_graph_runner_recaptures_when_a_cache_grows(generator, monkeypatch):
    monkeypatch.setattr(session_module, "DEFAULT_HISTORY_FRAMES", 6)
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    model = _model(seed, torch.float32, "cpu")
    eager = TokenStreamingSession(
        model,
        batch=STREAMS,
        chunk=2,
        left_chunks=None,
        sampling=SamplingConfig(state_gain=4.0, stop_gain=4.0),
    )
    graph = _eager_graph_session(model, None, monkeypatch)
    runners = []
    steps = [(0.2 * torch.randn(STREAMS, eager.chunk_samples, generator=generator), None, False, None)] * 8
    want = _run(eager, steps)
    got = _run(graph, steps, after_step=lambda s: runners.append(s._graph))
    assert len({id(r) for r in runners}) >= 2, f"seed {seed}: no recapture after the caches grew"
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        assert torch.equal(w.mel, g.mel) and torch.equal(w.raw.feedback, g.raw.feedback), (
            f"seed {seed}, step {index}"
        )


def _check_same(eager, graph, seed, dtype):
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for index, (want, got) in enumerate(zip(eager, graph, strict=True)):
        where = f"seed {seed}, {dtype}, step {index}"
        assert torch.equal(got.frames, want.frames), where
        assert torch.equal(got.invalid_input, want.invalid_input), where
        assert torch.equal(got.raw.feedback, want.raw.feedback), f"sampled tokens differ ({where})"
        for name in ("mel", "speaking", "audio"):
            a, b = getattr(got, name), getattr(want, name)
            assert not a.isnan().any(), f"{name} has NaN ({where})"
            assert torch.allclose(a.float(), b.float(), atol=tolerance, rtol=tolerance), f"{name} ({where})"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("left_chunks", [None, 2])
def test_graph_replays_give_the_eager_steps(dtype, left_chunks, generator):
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    model = _model(seed, dtype)
    eager, graph = _sessions(model, left_chunks, max_history_frames=64 if left_chunks is None else None)
    steps = _script(eager.chunk_samples, generator)
    want = _run(eager, steps)
    got = _run(graph, steps)
    assert graph._graph is not None, "the session did not capture a graph"
    _check_same(want, got, seed, dtype)
    assert torch.equal(graph.state.positions, eager.state.positions), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_growing_cache_recaptures(generator, monkeypatch):
    """Unbounded history without max_history_frames: the caches start small here and grow twice."""
    monkeypatch.setattr(session_module, "DEFAULT_HISTORY_FRAMES", 6)
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    model = _model(seed, torch.float32)
    eager, graph = _sessions(model, None)
    steps = [(0.2 * torch.randn(STREAMS, eager.chunk_samples, generator=generator), None, False, None)] * 8
    want = _run(eager, steps)
    captured = []
    got = []
    for audio, _, _, _ in steps:
        got.append(graph.step(audio.cuda()))
        captured.append(graph._graph)  # kept alive: distinct graphs have distinct ids
    assert len({id(g) for g in captured}) >= 2, f"no recapture after the caches grew (seed {seed})"
    assert graph._history_capacity() >= 16
    _check_same(want, got, seed, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_outputs_outlive_the_next_replay(generator):
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    _, graph = _sessions(_model(seed, torch.float32), 2)
    first = graph.step(0.2 * torch.randn(STREAMS, graph.chunk_samples, generator=generator).cuda())
    kept = cloned(first)
    graph.step(0.2 * torch.randn(STREAMS, graph.chunk_samples, generator=generator).cuda())
    for a, b in zip(tensor_leaves(first), tensor_leaves(kept), strict=True):
        assert torch.equal(a, b), f"a replay overwrote an earlier step's output (seed {seed})"


def test_graphs_need_the_static_engine_and_cuda():
    model = TokenDuplexModel(CONFIG).eval()
    with pytest.raises(ValueError, match="engine='static'"):
        TokenStreamingSession(model, engine="packed", cuda_graph=True)
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA device"):
            TokenStreamingSession(model, cuda_graph=True)


def test_tree_helpers_follow_dataclasses_lists_and_none():
    @dataclasses.dataclass
    class Inner:
        a: torch.Tensor
        b: torch.Tensor | None

    @dataclasses.dataclass
    class Outer:
        inner: Inner
        items: list
        name: str

    value = Outer(Inner(torch.ones(2), None), [torch.zeros(3), (torch.arange(2),)], "x")
    leaves = tensor_leaves(value)
    assert [tuple(t.shape) for t in leaves] == [(2,), (3,), (2,)]
    copy = cloned(value)
    for original, twin in zip(leaves, tensor_leaves(copy), strict=True):
        assert torch.equal(original, twin) and original.data_ptr() != twin.data_ptr()
    assert copy.name == "x" and copy.inner.b is None
