"""The static engine's step reads nothing back from the device: every tensor a step carries from one
chunk to the next is made one whose host reads fail, and a step still runs (the precondition of
capturing the step as a CUDA graph; issue 18)."""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from s2s.data.tokens import BOS, EOS
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig
from s2s.streaming.token_session import TokenStreamingSession
from tests.models.test_packing import NoHostReads

CONFIG = TokenDuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)


def _guarded(value):
    """`value` with every tensor in it (dataclasses and lists followed) turned into NoHostReads."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(NoHostReads)
    if isinstance(value, list):
        return [_guarded(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _guarded(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


def _guard_session(session) -> None:
    state = session.state
    for field in dataclasses.fields(state):
        if field.name != "caches":
            setattr(state, field.name, _guarded(getattr(state, field.name)))
    for cache in state.caches.all():
        cache.key_frames = _guarded(cache.key_frames)
        cache.query_frames = _guarded(cache.query_frames)
        cache.keys, cache.values = _guarded(cache.keys), _guarded(cache.values)
    session.seeds = _guarded(session.seeds)


@pytest.mark.parametrize("left_chunks", [None, 2])
@pytest.mark.parametrize("onset_quantile", [None, 0.5])
def test_a_static_step_makes_no_host_reads(left_chunks, onset_quantile, generator):
    torch.manual_seed(int(torch.randint(1000, (1,), generator=generator)))
    model = TokenDuplexModel(CONFIG).eval()
    with torch.no_grad():
        model.token_head.bias[BOS] += 2.0
        model.token_head.bias[EOS] += 1.0
    sampling = SamplingConfig(state_gain=4.0, stop_gain=4.0, onset_quantile=onset_quantile)
    session = TokenStreamingSession(
        model, batch=3, chunk=2, left_chunks=left_chunks, vocoder=True, sampling=sampling
    )
    size = session.chunk_samples
    audio = 0.2 * torch.randn(3, 6 * size, generator=generator)
    session.step(audio[:, :size])
    _guard_session(session)
    for start in range(size, 6 * size, size):
        out = session.step(audio[:, start : start + size].as_subclass(NoHostReads))
        assert isinstance(out.mel, NoHostReads)  # the guard reached the outputs: it was in the data flow
    lengths = torch.tensor([size, 0, 700])
    session.step(
        audio[:, :size].as_subclass(NoHostReads), lengths=lengths, final=torch.tensor([False, False, True])
    )


# Operators a CUDA graph cannot capture: a read of a device value on the host (item, equal,
# nonzero, a bool of a tensor) or a tensor made from host data (torch.tensor(...) on the device is a
# host-to-device copy). A CPU run sees them all, before any GPU does.
UNCAPTURABLE = {"_local_scalar_dense", "item", "equal", "is_nonzero", "nonzero", "lift_fresh", "allclose"}


class UncapturableOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in UNCAPTURABLE:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("left_chunks", [None, 2])
@pytest.mark.parametrize("sampling", ["defaults", "biased-quantile-gains"])
def test_the_graphed_step_has_no_operator_a_cuda_graph_cannot_capture(left_chunks, sampling, generator):
    """What StepGraph records (step_on_device without the vocoder): every aten operator it runs,
    through the model, the caches, the attention call and the sampling, is one a capture takes."""
    torch.manual_seed(int(torch.randint(1000, (1,), generator=generator)))
    model = TokenDuplexModel(CONFIG).eval()
    config = SamplingConfig()
    if sampling != "defaults":
        config = SamplingConfig(
            pad_bias=0.5, bos_bias=1.0, eos_bias=-0.5, state_gain=4.0, stop_gain=4.0, onset_quantile=0.5
        )
    session = TokenStreamingSession(
        model, batch=3, chunk=2, left_chunks=left_chunks, sampling=config, state_gains=[0.0, 2.0, 4.0]
    )
    size = session.chunk_samples
    for _ in range(2):
        session.step(0.2 * torch.randn(3, size, generator=generator))
    values = torch.tensor([[size, 0, 700], [2, 0, 1], [0, 0, 1]])
    with torch.no_grad(), UncapturableOps() as spy:
        session.step_on_device(0.2 * torch.randn(3, size, generator=generator), values, vocode=False)
    assert not spy.seen, f"a captured step would run {sorted(set(spy.seen))}"


def test_model_v1s_graphed_step_has_no_operator_a_cuda_graph_cannot_capture(generator):
    """The same for model v1 (StreamingSession: mel and speaking fed back, no sampling)."""
    from s2s.models.config import DuplexConfig
    from s2s.models.duplex import DuplexModel
    from s2s.streaming.session import StreamingSession

    torch.manual_seed(int(torch.randint(1000, (1,), generator=generator)))
    model = DuplexModel(DuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)).eval()
    session = StreamingSession(model, batch=2, chunk=2, left_chunks=2)
    size = session.chunk_samples
    session.step(0.2 * torch.randn(2, size, generator=generator))
    values = torch.tensor([[size, 700], [2, 1], [0, 1]])
    with torch.no_grad(), UncapturableOps() as spy:
        session.step_on_device(0.2 * torch.randn(2, size, generator=generator), values, vocode=False)
    assert not spy.seen, f"a captured step would run {sorted(set(spy.seen))}"
