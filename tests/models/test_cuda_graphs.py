"""CUDA graphs of the block stacks: the tensor-only stacks a graph captures equal the model's own
loop and never read the device on the host (CPU), and graphed training steps equal eager ones (GPU)."""

import copy
import dataclasses
import importlib.util
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from s2s.attention import ChunkSpec
from s2s.models.attention_context import OfflineAttention
from s2s.models.cuda_graphs import (
    DecoderBlocks,
    EncoderBlocks,
    chunk_table,
    stack_for_capture,
    use_cuda_graphs,
)
from s2s.models.layers import Rotation
from s2s.models.packing import AlignedLayout, PackedLayout, runs_unpacked
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from tests.models.test_packing import NoHostReads

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
NEEDS_CUTE = pytest.mark.skipif(
    not HOPPER or importlib.util.find_spec("cutlass") is None,
    reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl",
)
SMALL = TokenDuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0)


def _batch(g: torch.Generator, config, frames: int, lengths: list[int], chunks: list[int]):
    batch = len(lengths)
    x = torch.randn(batch, frames, config.dim, generator=g, dtype=torch.float64)
    encoded = torch.randn(batch, frames, config.dim, generator=g, dtype=torch.float64)
    positions = torch.arange(frames).expand(batch, frames).contiguous()
    spec = ChunkSpec(torch.tensor(chunks, dtype=torch.int32), left_chunks=config.left_chunks)
    layout = PackedLayout.from_lengths(torch.tensor(lengths), frames)
    return x, encoded, positions, spec, layout


def test_the_tensor_only_stacks_equal_the_model_loop_and_never_read_the_device(generator):
    """EncoderBlocks / DecoderBlocks (what a graph captures: tensors in, spec and layout made inside
    from device values) give the blocks' outputs and gradients of the eager loop on an aligned padded
    batch, with every tensor input guarded against host reads."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    model = TokenDuplexModel(SMALL).double().train()
    x, encoded, positions, spec, layout = _batch(generator, SMALL, 24, [24, 16, 8], [4, 8, 2])
    assert layout.has_padding and layout.padding_hidden(spec), f"seed {seed}"
    weights = torch.randn(3, 24, SMALL.dim, generator=generator, dtype=torch.float64)

    def eager(x, encoded):
        h = x
        rotation = Rotation.at(positions, SMALL.head_dim, SMALL.rope_base)
        attention = OfflineAttention(spec, layout, SMALL.attention_backend)
        for block in model.encoder.blocks:
            h = block(h, rotation, attention)
        d = encoded
        for block in model.decoder.blocks:
            d = block(d, rotation, h, attention, attention)
        return h, d

    table = chunk_table(spec.resolve(3))

    def stacked(x, encoded):
        guard = [t.as_subclass(NoHostReads) for t in (x, positions, table, layout.valid)]
        h = EncoderBlocks(model.encoder.blocks, SMALL)(*guard)
        d = DecoderBlocks(model.decoder.blocks, SMALL)(
            encoded.as_subclass(NoHostReads), guard[1], h, *guard[2:]
        )
        return h.as_subclass(torch.Tensor), d.as_subclass(torch.Tensor)

    results = []
    for run in (eager, stacked):
        a, b = x.clone().requires_grad_(), encoded.clone().requires_grad_()
        h, d = run(a, b)
        model.zero_grad(set_to_none=True)
        ((h * weights).sum() + (d * weights).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((h.detach(), d.detach(), a.grad, b.grad, grads))
    names = ("encoder", "decoder", "dx", "dencoded")
    for name, got, want in zip(names, results[1][:4], results[0][:4], strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )
    assert results[1][4].keys() == results[0][4].keys() and len(results[0][4]) > 0
    for name, grad in results[0][4].items():
        torch.testing.assert_close(
            results[1][4][name], grad, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_compiled_stacks_hold_attention_inside_one_graph_per_block(backend, generator):
    """The stacks a graph captures with every block compiled whole (module.compile_blocks with
    module.cuda_graphs; fullgraph: a split at attention would be an error) give the eager stacks'
    outputs and gradients: attention reaches the compiler as the s2s::chunk_attention operator (the
    CuTe kernel's path; the reference stands in for it here) or traced (SDPA). The model's own
    blocks stay uncompiled."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, attention_backend=backend)
    model = TokenDuplexModel(config).train()
    x, encoded, positions, spec, layout = _batch(generator, config, 24, [24, 16, 8], [4, 8, 2])
    x, encoded = x.float(), encoded.float()
    table = chunk_table(spec.resolve(3))
    stacks = (
        EncoderBlocks(model.encoder.blocks, config),
        DecoderBlocks(model.decoder.blocks, config),
    )
    results = []
    for compiled in (False, True):
        encoder, decoder = (stack_for_capture(stack, compiled) for stack in stacks)
        a, b = x.clone().requires_grad_(), encoded.clone().requires_grad_()
        h = encoder(a, positions, table, layout.valid)
        d = decoder(b, positions, h, table, layout.valid)
        model.zero_grad(set_to_none=True)
        (h.square().sum() + d.square().sum()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((h.detach(), d.detach(), a.grad, b.grad, grads))
    blocks = [*model.encoder.blocks, *model.decoder.blocks]
    assert all(block._compiled_call_impl is None for block in blocks), "the model's blocks stay eager"
    for name, got, want in zip(
        ("encoder", "decoder", "dx", "dencoded"), results[1], results[0], strict=False
    ):
        assert torch.isfinite(got).all(), f"seed {seed}: {name}"
        torch.testing.assert_close(
            got, want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )
    assert results[1][4].keys() == results[0][4].keys() and len(results[0][4]) > 0
    for name, want in results[0][4].items():
        error = ((results[1][4][name] - want).norm() / want.norm().clamp(min=1e-12)).item()
        assert error < 1e-4, f"seed {seed}: {name}: gradient off by {error:.2e}"


def test_flex_attention_stays_inside_the_compiled_blocks(generator):
    """FlexAttention calls of the graphed stacks are traced into the compiled block (fullgraph: no
    split). Forward only, through AOT autograd without Inductor: on the CPU FlexAttention has no
    backward and Inductor no lowering for it (on a GPU stack_for_capture lowers it)."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, attention_backend="flex")
    model = TokenDuplexModel(config).eval()
    x, _, positions, spec, layout = _batch(generator, config, 32, [32, 16], [4, 8])
    table = chunk_table(spec.resolve(2))
    stack = EncoderBlocks(model.encoder.blocks, config)
    traced = torch.nn.ModuleList(
        [torch.compile(block, fullgraph=True, dynamic=False, backend="aot_eager") for block in stack.blocks]
    )
    with torch.no_grad():
        want = stack(x.float(), positions, table, layout.valid)
        got = EncoderBlocks(traced, config)(x.float(), positions, table, layout.valid)
    assert torch.isfinite(got).all(), f"seed {seed}"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: {m}")


class HostWaits(TorchDispatchMode):
    """Records the operators that make a CUDA host wait for the device (not allowed in a capture)."""

    WAITING = frozenset(
        {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "_unique2", "equal"}
    )

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.WAITING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_the_stacks_forward_and_backward_never_wait_for_the_device(backend, generator):
    """Forward and backward of both stacks (with dropout) contain no operator that reads a value
    back to the host: what a graph capture refuses."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, dropout=0.1, attention_backend=backend)
    model = TokenDuplexModel(config).train()
    x, encoded, positions, spec, layout = _batch(generator, config, 24, [24, 16, 8], [4, 8, 2])
    x, encoded = x.float().requires_grad_(), encoded.float().requires_grad_()
    table = chunk_table(spec.resolve(3))
    waits = HostWaits()
    with waits:
        h = EncoderBlocks(model.encoder.blocks, config)(x, positions, table, layout.valid)
        d = DecoderBlocks(model.decoder.blocks, config)(encoded, positions, h, table, layout.valid)
        (h.sum() + d.sum()).backward()
    assert waits.seen == [], f"seed {seed}, {backend}: {waits.seen}"
    assert x.grad is not None and encoded.grad is not None and torch.isfinite(x.grad).all(), f"seed {seed}"


def test_a_failed_capture_leaves_the_run_eager_with_the_reason(monkeypatch, generator):
    """A capture that fails (an operation the graph cannot hold) warns once with the reason and
    hands every later call back to the eager loop, without trying again."""
    import s2s.models.cuda_graphs as cuda_graphs

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(cuda_graphs, "graphable", lambda *args: True)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    model = TokenDuplexModel(SMALL).train()
    use_cuda_graphs(model)
    x, _, positions, spec, layout = _batch(generator, SMALL, 16, [16, 8], [4, 8])
    x = x.float().requires_grad_()
    with pytest.warns(
        UserWarning, match="CUDA graphs are off.*operation not permitted when stream is capturing\\)"
    ):
        assert model.encoder.graphs(x, positions, spec, layout) is None
    assert model.encoder.graphs(x, positions, spec, layout) is None and len(attempts) == 1
    assert model.encoder.graphs.failure == "RuntimeError: operation not permitted when stream is capturing"
    assert model.encoder.graphs.graphs == {}


@pytest.mark.parametrize("takes_mode", [False, True], ids=["torch-2.11", "capture_error_mode"])
def test_captures_run_thread_local_on_one_stream(monkeypatch, takes_mode):
    """Inside capture_settings every capture make_graphed_callables builds with torch.cuda.graph runs
    in thread-local mode (passed to make_graphed_callables where it takes the mode, the patched
    class's default where it does not, as in torch 2.11; an explicit mode still wins) and on one
    capture stream, though make_graphed_callables hands each call a fresh stream (as torch does: the
    caching allocator then reused no block between the shapes sharing a pool, stop 56); the
    original class is back afterwards, also when the capture raised."""
    from s2s.models import cuda_graphs
    from s2s.models.cuda_graphs import capture_settings

    built = []

    class RecordingGraph:
        def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
            built.append((capture_error_mode, stream))

    def without_mode(callables, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
        return torch.cuda.graph(object(), stream=object(), pool=pool)  # a stream of its own per call

    def with_mode(callables, sample_args, pool=None, capture_error_mode="global"):
        return torch.cuda.graph(object(), stream=object(), pool=pool, capture_error_mode=capture_error_mode)

    monkeypatch.setattr(cuda_graphs, "_CAPTURE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *args, **kwargs: object())
    monkeypatch.setattr(torch.cuda, "graph", RecordingGraph)
    monkeypatch.setattr(torch.cuda.graphs, "graph", RecordingGraph)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", with_mode if takes_mode else without_mode)
    with pytest.raises(RuntimeError, match="capture failed"), capture_settings() as capture_mode:
        assert capture_mode == ({"capture_error_mode": "thread_local"} if takes_mode else {})
        torch.cuda.make_graphed_callables(None, (), **capture_mode)
        torch.cuda.graph(object(), capture_error_mode="relaxed")
        assert torch.cuda.graphs.graph is torch.cuda.graph
        raise RuntimeError("capture failed")
    with capture_settings() as capture_mode:
        torch.cuda.make_graphed_callables(None, (), **capture_mode)  # another shape, another call
    assert [mode for mode, _ in built] == ["thread_local", "relaxed", "thread_local"], built
    streams = {id(stream) for _, stream in built}
    assert len(streams) == 1 and built[0][1] is cuda_graphs._CAPTURE_STREAMS[0], built
    assert torch.cuda.graph is RecordingGraph and torch.cuda.graphs.graph is RecordingGraph


def test_only_unpacked_batches_can_take_a_graph():
    spec = ChunkSpec(torch.tensor([4, 2], dtype=torch.int32))
    assert runs_unpacked(spec, None)
    assert runs_unpacked(spec, PackedLayout.from_lengths(torch.tensor([12, 12]), 12))  # no padding
    assert runs_unpacked(spec, PackedLayout.from_lengths(torch.tensor([12, 6]), 12))  # on the chunk grid
    assert not runs_unpacked(spec, PackedLayout.from_lengths(torch.tensor([12, 7]), 12))  # 7 % 2 != 0
    assert not runs_unpacked(spec, PackedLayout.from_lengths(torch.tensor([10, 6]), 12))  # 10 % 4 != 0
    assert runs_unpacked(spec, AlignedLayout(torch.ones(2, 12, dtype=torch.bool)))


def test_a_spec_made_from_device_values_reads_nothing_and_has_no_host_copy():
    chunks = ChunkSpec(torch.tensor([4, 2], dtype=torch.int32), left_chunks=3).resolve(2)
    guarded = type(chunks)(*(t.as_subclass(NoHostReads) for t in (
        chunks.chunk_q, chunks.chunk_k, chunks.q_offset, chunks.k_offset)), left_chunks=3)  # fmt: skip
    spec = ChunkSpec.from_resolved(guarded)
    assert spec.resolve(2) is guarded and spec.left_chunks == 3
    with pytest.raises(ValueError, match="no host copy"):
        spec.resolve_host(2)


def test_graphs_leave_cpu_training_as_it_was(generator):
    """On the CPU the graphed stacks decline every call: the same outputs, no graph captured."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    model = TokenDuplexModel(SMALL).train()
    twin = TokenDuplexModel(SMALL).train()
    twin.load_state_dict(model.state_dict())
    use_cuda_graphs(twin)
    mel = torch.randn(2, 16 * SMALL.mel_per_frame, SMALL.n_mels, generator=generator)
    tokens = torch.randint(0, SMALL.system_vocab, (2, 16), generator=generator)
    lengths, chunk = torch.tensor([16, 8]), torch.tensor([4, 8], dtype=torch.int32)
    out = model(mel, tokens, lengths=lengths, chunk=chunk)
    again = twin(mel, tokens, lengths=lengths, chunk=chunk)
    torch.testing.assert_close(again.token_logits, out.token_logits, rtol=0, atol=0, msg=f"seed {seed}")
    assert twin.encoder.graphs.graphs == {} and twin.encoder.graphs.replays == 0
    assert twin.state_dict().keys() == model.state_dict().keys()
    # a copy (the free-running validation streams one) or a pickle runs eagerly, without graphs
    copied = copy.deepcopy(twin)
    assert copied.encoder.graphs is None and copied.decoder.graphs is None
    assert twin.encoder.graphs is not None and twin.decoder.graphs is not None
    assert pickle.loads(pickle.dumps(twin)).encoder.graphs is None


def _cuda_batch(generator, config, frames: int, lengths: list[int], chunks: list[int]):
    """A training batch on the GPU: random log-mel and tokens, lengths, per-sequence chunks (host)."""
    mel = torch.randn(len(lengths), frames * config.mel_per_frame, config.n_mels, generator=generator)
    tokens = torch.randint(0, config.system_vocab, (len(lengths), frames), generator=generator)
    return (mel.cuda(), tokens.cuda(), torch.tensor(lengths).cuda(),
            torch.tensor(chunks, dtype=torch.int32))  # fmt: skip


def _assert_steps_follow(seed: int, got: tuple, want: tuple) -> None:
    """Losses and final parameters of graphed steps (`got`) within 2% of the eager ones (`want`)."""
    (got_losses, got_parameters), (want_losses, want_parameters) = got, want
    torch.testing.assert_close(
        torch.tensor(got_losses), torch.tensor(want_losses), rtol=2e-2, atol=2e-2,
        msg=lambda m: f"seed {seed}: losses {got_losses} vs eager {want_losses}: {m}",
    )  # fmt: skip
    for name, value in want_parameters.items():
        assert torch.isfinite(got_parameters[name]).all(), f"seed {seed}: {name}"
        error = ((got_parameters[name] - value).norm() / value.norm().clamp(min=1e-12)).item()
        steps = len(got_losses)
        assert error < 2e-2, f"seed {seed}: {name} after {steps} steps differs from eager by {error:.2e}"


def _train_steps(model, batches, steps_per_batch: int = 2):
    """Losses and final parameters of SGD steps over `batches` (each twice) under bf16 autocast."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for mel, tokens, lengths, chunk in batches:
        for _ in range(steps_per_batch):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(mel, tokens, lengths=lengths, chunk=chunk)
                mask = (torch.arange(tokens.shape[1], device="cuda")[None, :] < lengths[:, None]).float()
                loss = (out.token_logits.float().logsumexp(-1) * mask).sum() / mask.sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.gpu
@NEEDS_CUTE
@pytest.mark.parametrize("compiled", [False, True], ids=["eager-blocks", "compiled-blocks"])
def test_graphed_training_steps_equal_eager_ones(compiled, generator):
    """Steps through captured graphs follow the eager steps on the CuTe kernel (weights updated
    between replays, new inputs copied in, a second shape captured, an unaligned batch run eagerly);
    also with the blocks compiled, attention inside them as the s2s::chunk_attention operator."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, dim=128, heads=2, kv_heads=1, attention_backend="cute")
    eager = TokenDuplexModel(config).cuda().train()
    graphed = TokenDuplexModel(config).cuda().train()
    graphed.load_state_dict(eager.state_dict())
    use_cuda_graphs(graphed, compiled=compiled)

    def batch(frames, lengths, chunks):
        return _cuda_batch(generator, config, frames, lengths, chunks)

    batches = [
        batch(32, [32, 24, 16], [8, 4, 2]),
        batch(32, [32, 32, 8], [2, 8, 4]),  # same shape: replayed with new values
        batch(24, [24, 16], [4, 8]),  # another shape: captured
        batch(32, [32, 27, 16], [8, 2, 2]),  # 27 % 2 != 0: packed, eager
        batch(32, [32, 16, 24], [2, 8, 4]),  # the first shape again, after another one shared its pool
    ]
    want_losses, want = _train_steps(eager, batches)
    got_losses, got = _train_steps(graphed, batches)
    assert len(graphed.encoder.graphs.graphs) == 2 and len(graphed.decoder.graphs.graphs) == 2, f"seed {seed}"
    assert graphed.encoder.graphs.replays == 8, f"seed {seed}: {graphed.encoder.graphs.replays} replays"
    _assert_steps_follow(seed, (got_losses, got), (want_losses, want))
    copied = copy.deepcopy(graphed).eval()  # as the free-running validation streams a copy
    assert copied.encoder.graphs is None and len(graphed.encoder.graphs.graphs) == 2, f"seed {seed}"


@pytest.mark.gpu
@NEEDS_CUTE
@pytest.mark.parametrize("compiled", [False, True], ids=["eager-blocks", "compiled-blocks"])
def test_graphed_steps_on_packed_rows_equal_eager_ones(compiled, generator):
    """With a row bucket the graphs run each batch's valid frames packed into one row (no padding
    through the GEMMs, attention packed on the CuTe kernels): steps follow the eager, padded ones,
    a batch whose padding its chunks do not hide replays too, each bucket is one graph (and one of
    another batch size its own: the chunk table and offsets have a column per sequence)."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, dim=128, heads=2, kv_heads=1, attention_backend="cute")
    eager = TokenDuplexModel(config).cuda().train()
    graphed = TokenDuplexModel(config).cuda().train()
    graphed.load_state_dict(eager.state_dict())
    use_cuda_graphs(graphed, compiled=compiled, row_bucket=16)

    def batch(frames, lengths, chunks):
        return _cuda_batch(generator, config, frames, lengths, chunks)

    batches = [
        batch(32, [32, 24, 16], [8, 4, 2]),  # 72 real frames: 80 packed rows
        batch(32, [32, 27, 16], [8, 2, 2]),  # 75: the same bucket, replayed (27 % 2 != 0 as well)
        batch(24, [24, 16], [4, 8]),  # 40: another bucket, captured
        batch(32, [32, 30, 10, 8], [8, 2, 2, 4]),  # 80 rows again, of 4 sequences: its own graph
        batch(32, [32, 20, 24], [8, 4, 2]),  # 76: the first bucket again, after others shared its pool
    ]
    want_losses, want = _train_steps(eager, batches)
    got_losses, got = _train_steps(graphed, batches)
    shapes = sorted(key.shape for key in graphed.encoder.graphs.graphs)
    assert shapes == [(1, 48, config.dim), (1, 80, config.dim), (1, 80, config.dim)], f"seed {seed}: {shapes}"
    assert graphed.encoder.graphs.replays == 10 == graphed.decoder.graphs.replays, f"seed {seed}"
    _assert_steps_follow(seed, (got_losses, got), (want_losses, want))


def _graph_pool_bytes() -> int:
    """Bytes the CUDA caching allocator holds in graph memory pools (every pool but the default)."""
    return sum(
        segment["total_size"]
        for segment in torch.cuda.memory_snapshot()
        if tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0)
    )


@pytest.mark.gpu
@NEEDS_CUTE
def test_shapes_of_one_stack_share_their_graph_memory(generator):
    """A second batch shape of the same size captures into the first one's pool: its activations
    take the memory the first shape's took (a step replays one shape at a time), so the graph pools
    grow by much less than the first capture took (each shape in its own pool: by as much again;
    packed rows of ~8 buckets ran out of an H100's memory so)."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, dim=256, heads=4, kv_heads=2, attention_backend="cute")
    model = TokenDuplexModel(config).cuda().train()
    use_cuda_graphs(model)
    torch.cuda.synchronize()
    before = _graph_pool_bytes()
    _train_steps(model, [_cuda_batch(generator, config, 512, [512, 512], [8, 8])], steps_per_batch=1)
    first = _graph_pool_bytes() - before
    _train_steps(model, [_cuda_batch(generator, config, 256, [256] * 4, [8] * 4)], steps_per_batch=1)
    second = _graph_pool_bytes() - before - first
    assert len(model.encoder.graphs.graphs) == 2 == len(model.decoder.graphs.graphs), f"seed {seed}"
    assert first > 0, f"seed {seed}: the first capture took no graph memory"
    assert second < 0.5 * first, f"seed {seed}: the second shape took {second} more bytes after {first}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_failed_capture_leaves_dropout_working(generator):
    """A capture that fails after a dropout inside it registered the CUDA generator leaves that
    generator usable: eager dropout afterwards runs and keeps or scales every element."""
    from s2s.models.cuda_graphs import rng_restored_on_failure

    seed = generator.initial_seed()
    x = torch.randn(64, 256, generator=generator).cuda()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError), rng_restored_on_failure(x.device), torch.cuda.graph(graph):
        torch.nn.functional.dropout(x, 0.5, training=True)
        torch.cuda.synchronize()  # not allowed while capturing: the capture fails
    y = torch.nn.functional.dropout(x, 0.5, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], 2 * x[kept], msg=lambda m: f"seed {seed}: {m}")
    assert 0.3 < kept.float().mean().item() < 0.7, f"seed {seed}: {kept.float().mean().item()} kept"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_capture_survives_another_thread_pinning_memory(generator):
    """The DataLoader's pin-memory thread keeps pinning batches while the first step captures; the
    capture (thread-local mode) must not fail because of it, and its replay equals float64 math."""
    import threading

    from s2s.models.cuda_graphs import capture_settings

    seed = generator.initial_seed()
    torch.manual_seed(seed)
    layer = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256)).cuda()
    reference = copy.deepcopy(layer).double()  # before graphing: a copy made after replays the graph
    sample = torch.randn(32, 256, generator=generator).cuda().requires_grad_()
    stop, pinned = threading.Event(), []

    def pin_forever():  # kept alive, so each pin is a fresh page-locked allocation (cudaHostAlloc)
        while not stop.is_set():
            if len(pinned) < 512:
                pinned.append(torch.empty(1 << 20, dtype=torch.uint8).pin_memory())

    thread = threading.Thread(target=pin_forever, daemon=True)
    thread.start()
    try:
        while not pinned:  # the thread is pinning before the capture begins
            pass
        with capture_settings() as capture_mode:
            graphed = torch.cuda.make_graphed_callables(layer, (sample,), **capture_mode)
    finally:
        stop.set()
        thread.join()
    x = torch.randn(32, 256, generator=generator).cuda()
    got = graphed(x).double()
    want = reference(x.double())
    assert torch.isfinite(got).all(), f"seed {seed}"
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3, msg=lambda m: f"seed {seed}: {m}")
