"""The static caches (preallocated, read in place) give what one offline pass gives, stream by stream."""

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention
from s2s.attention.cache_window import first_visible_key, read_window, ring_capacity, write_slots
from s2s.attention.static_cache import StaticCrossAttentionCache, StaticSelfAttentionCache

HEADS_Q, HEADS_K, DIM = 4, 2, 16


def offline(q, k, v, spec):
    """The float64 reference over one whole sequence (no cache)."""
    return chunk_attention(q[None].double(), k[None].double(), v[None].double(), spec, backend="reference")[0]


def poison(cache) -> None:
    """NaN in every slot: a slot read before it is written shows up as NaN in the output."""
    cache.keys.fill_(float("nan"))
    cache.values.fill_(float("nan"))


@pytest.mark.parametrize("left_chunks", [0, 1, 3, 6])
@pytest.mark.parametrize("chunk_q,chunk_k", [(4, 4), (1, 1), (2, 4), (3, 2)])
def test_the_window_holds_exactly_the_visible_run(chunk_q, chunk_k, left_chunks, generator):
    """Index math alone: write frame numbers into a mirrored ring step by step; at every step the
    slots the read window exposes hold, on its timeline, exactly the key frames the rule shows the
    step's queries (and the slots before the run are hidden by the rule)."""
    seed = generator.initial_seed()
    capacity = ring_capacity(chunk_k, left_chunks)
    ring = torch.full((1, 2 * capacity), -1)
    for query_chunk in range(40):
        key_frames = torch.tensor([query_chunk * chunk_k])
        slots = write_slots(key_frames, chunk_k, capacity, ring=True)[0]
        frames = torch.arange(chunk_k) + key_frames
        ring[0, slots], ring[0, slots + capacity] = frames, frames
        first = first_visible_key(torch.tensor([query_chunk * chunk_q]), chunk_q, chunk_k, left_chunks)
        window = read_window(first, key_frames + chunk_k, capacity, ring=True)
        used, offset = int(window.used), int(window.k_offset)
        assert 0 <= used <= 2 * capacity, f"seed {seed}"
        timeline = offset + torch.arange(used)
        shown = timeline[timeline >= int(first)]
        want = torch.arange(max(0, query_chunk - left_chunks) * chunk_k, (query_chunk + 1) * chunk_k)
        assert torch.equal(shown, want), f"seed {seed}, chunk {query_chunk}: {shown} != {want}"
        assert torch.equal(ring[0, shown - offset], want), f"seed {seed}, chunk {query_chunk}"


def run_self_cache(cache, q, k, v, plans):
    """Stream (B, T, H, D) inputs through `cache` by per-stream step plans (frames per step: whole
    chunks, 0 idle, a short last one); returns each stream's streamed output."""
    batch = q.shape[0]
    step_rows = cache.step_frames
    streamed = [[] for _ in range(batch)]
    consumed = [0] * batch
    for s in range(len(plans[0])):
        counts = torch.tensor([plans[b][s] for b in range(batch)])
        padded = [torch.randn(batch, step_rows, t.shape[2], DIM) for t in (q, k, v)]  # garbage padding
        for b in range(batch):
            n, c = plans[b][s], consumed[b]
            for slot, tensor in zip(padded, (q, k, v), strict=True):
                slot[b, :n] = tensor[b, c : c + n]
        out = cache.step(*padded, lengths=counts)
        for b in range(batch):
            n = plans[b][s]
            streamed[b].append(out[b, :n])
            assert (out[b, n:] == 0).all(), "padding rows come back as zeros"
            consumed[b] += n
    return [torch.cat(parts) for parts in streamed], consumed


def random_plan(generator, chunks: int, chunk: int, steps: int) -> list[int]:
    """`chunks` whole chunks of `chunk` frames spread over `steps` steps (idle steps between), the
    last one possibly short."""
    plan = [0] * steps
    busy = torch.randperm(steps, generator=generator)[:chunks].sort().values.tolist()
    for s in busy:
        plan[s] = chunk
    plan[busy[-1]] = int(torch.randint(1, chunk + 1, (1,), generator=generator))
    return plan


@pytest.mark.parametrize("left_chunks", [None, 0, 1, 3])
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_self_attention_static_cache_equals_one_shot(chunk, left_chunks, generator):
    seed = generator.initial_seed()
    batch, steps = 3, 14
    plans = [random_plan(generator, int(torch.randint(3, 11, (1,), generator=generator)), chunk, steps)]
    plans += [random_plan(generator, 10, chunk, steps), [chunk] * (steps - 1) + [0]]
    total = steps * chunk
    q = torch.randn(batch, total, HEADS_Q, DIM, generator=generator)
    k = torch.randn(batch, total, HEADS_K, DIM, generator=generator)
    v = torch.randn(batch, total, HEADS_K, DIM, generator=generator)
    cache = StaticSelfAttentionCache(batch, HEADS_K, DIM, chunk, left_chunks, capacity_frames=total)
    poison(cache)
    streamed, consumed = run_self_cache(cache, q, k, v, plans)
    assert cache.key_frames.tolist() == consumed
    for b in range(batch):
        n = consumed[b]
        want = offline(q[b, :n], k[b, :n], v[b, :n], ChunkSpec(chunk, left_chunks=left_chunks))
        got = streamed[b]
        assert torch.isfinite(got).all(), f"seed {seed}: stream {b} read an unwritten slot"
        assert (got.double() - want).abs().max() <= 1e-5, f"seed {seed}: stream {b}"


@pytest.mark.parametrize("left_chunks", [None, 0, 2])
def test_cross_attention_static_cache_equals_one_shot(left_chunks, generator):
    """Encoder chunks of 4 frames (25 Hz), decoder chunks of 2 frames (12.5 Hz)."""
    seed = generator.initial_seed()
    batch, n_chunks, chunk_q, chunk_k = 2, 9, 2, 4
    q = torch.randn(batch, n_chunks * chunk_q, HEADS_Q, DIM, generator=generator)
    k = torch.randn(batch, n_chunks * chunk_k, HEADS_K, DIM, generator=generator)
    v = torch.randn(batch, n_chunks * chunk_k, HEADS_K, DIM, generator=generator)
    cache = StaticCrossAttentionCache(
        batch, HEADS_K, DIM, chunk_q, chunk_k, left_chunks, capacity_frames=n_chunks * chunk_k
    )
    poison(cache)
    outs = []
    for n in range(n_chunks):
        enc = slice(n * chunk_k, (n + 1) * chunk_k)
        cache.append(k[:, enc], v[:, enc])
        outs.append(cache.attend(q[:, n * chunk_q : (n + 1) * chunk_q]))
    got = torch.cat(outs, dim=1)
    want = chunk_attention(
        q.double(), k.double(), v.double(), ChunkSpec(chunk_q, chunk_k, left_chunks), backend="reference"
    )
    assert torch.isfinite(got).all(), f"seed {seed}"
    assert (got.double() - want).abs().max() <= 1e-5, f"seed {seed}"


def test_a_stream_is_unaffected_by_the_others(generator):
    """Stream 0's output is bit-identical whatever the other streams feed (NaN included) or hold."""
    seed = generator.initial_seed()
    batch, chunk, steps = 3, 4, 6
    q = torch.randn(batch, steps * chunk, HEADS_Q, DIM, generator=generator)
    k = torch.randn(batch, steps * chunk, HEADS_K, DIM, generator=generator)
    v = torch.randn(batch, steps * chunk, HEADS_K, DIM, generator=generator)
    outputs = []
    for others in ("random", "nan"):
        qq, kk, vv = q.clone(), k.clone(), v.clone()
        if others == "nan":
            for t in (qq, kk, vv):
                t[1:] = float("nan")
        cache = StaticSelfAttentionCache(batch, HEADS_K, DIM, chunk, left_chunks=1)
        outs = [
            cache.step(*(t[:, s * chunk : (s + 1) * chunk] for t in (qq, kk, vv)))[0] for s in range(steps)
        ]
        outputs.append(torch.cat(outs))
    assert torch.isfinite(outputs[0]).all(), f"seed {seed}"
    assert torch.equal(outputs[0], outputs[1]), f"seed {seed}: stream 0 changed with its neighbours"


def test_restoring_a_snapshot_undoes_a_step(generator):
    """A step that failed half way is undone by restoring the frame counts: the retried step gives
    what it would have given."""
    seed = generator.initial_seed()
    batch, chunk = 2, 4
    cache = StaticSelfAttentionCache(batch, HEADS_K, DIM, chunk, left_chunks=1)
    data = [torch.randn(batch, 4 * chunk, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    for s in range(3):
        cache.step(*(t[:, s * chunk : (s + 1) * chunk] for t in data))
    snapshot = cache.snapshot()
    junk = [torch.randn(batch, chunk, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    cache.step(*junk)  # as if the step had failed after its attention
    cache.restore(snapshot)
    retried = cache.step(*(t[:, 3 * chunk :] for t in data))
    want = offline(*(t[0] for t in data), ChunkSpec(chunk, left_chunks=1))[3 * chunk :]
    assert (retried[0].double() - want).abs().max() <= 1e-5, f"seed {seed}"


def test_reset_starts_one_stream_over(generator):
    seed = generator.initial_seed()
    batch, chunk = 2, 3
    cache = StaticSelfAttentionCache(batch, HEADS_K, DIM, chunk, left_chunks=None, capacity_frames=12)
    first = [torch.randn(batch, chunk, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    cache.step(*first)
    cache.reset([1])
    second = [torch.randn(batch, chunk, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    out = cache.step(*second)
    spec = ChunkSpec(chunk)
    fresh = offline(*(t[1] for t in second), spec)
    continued = offline(*(torch.cat([a[0], b[0]]) for a, b in zip(first, second, strict=True)), spec)
    assert (out[1].double() - fresh).abs().max() <= 1e-5, f"seed {seed}"
    assert (out[0].double() - continued[chunk:]).abs().max() <= 1e-5, f"seed {seed}"


def test_a_linear_cache_grows_on_request(generator):
    seed = generator.initial_seed()
    chunk = 2
    cache = StaticSelfAttentionCache(1, HEADS_K, DIM, chunk, capacity_frames=4)
    data = [torch.randn(1, 5 * chunk, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    outs = []
    for s in range(5):
        cache.reserve((s + 1) * chunk)
        outs.append(cache.step(*(t[:, s * chunk : (s + 1) * chunk] for t in data))[0])
    assert cache.capacity >= 10
    want = offline(*(t[0] for t in data), ChunkSpec(chunk))
    assert (torch.cat(outs).double() - want).abs().max() <= 1e-5, f"seed {seed}"


def test_static_caches_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="per-stream chunk sizes stream through"):
        StaticSelfAttentionCache(2, HEADS_K, DIM, torch.tensor([2, 4]), left_chunks=1)
    with pytest.raises(ValueError, match="needs capacity_frames"):
        StaticSelfAttentionCache(2, HEADS_K, DIM, 4)
    cache = StaticSelfAttentionCache(2, HEADS_K, DIM, 4, left_chunks=1)
    q, kv = torch.randn(2, 4, HEADS_Q, DIM), torch.randn(2, 4, HEADS_K, DIM)
    with pytest.raises(ValueError, match=r"cache holds torch\.float32"):
        cache.step(q.double(), kv.double(), kv.double())
    with pytest.raises(ValueError, match=r"k must be \(B=2, n, Hk=2, D=16\)"):
        cache.step(q, torch.randn(2, 4, 3, DIM), kv)
    with pytest.raises(ValueError, match="steps of up to 4 query frames"):
        cache.step(
            torch.randn(2, 8, HEADS_Q, DIM), torch.randn(2, 8, HEADS_K, DIM), torch.randn(2, 8, HEADS_K, DIM)
        )
    with pytest.raises(TypeError, match="bool flags"):
        cache.reset(torch.tensor([0.0, 1.0]))
    assert cache.key_frames.tolist() == [0, 0]  # nothing refused changed the cache


def test_reset_zeroes_the_rows_it_starts_over():
    """A stream that starts over gets zeroed storage (what its last dialogue left, NaN included, is
    gone); the other streams' rows are untouched."""
    cache = StaticSelfAttentionCache(3, HEADS_K, DIM, 2, left_chunks=1)
    poison(cache)
    cache.reset(torch.tensor([False, True, False]))
    assert (cache.keys[1] == 0).all() and (cache.values[1] == 0).all()
    assert cache.keys[[0, 2]].isnan().all() and cache.values[[0, 2]].isnan().all()


@pytest.mark.parametrize("left_chunks", [None, 2])
def test_one_step_plan_serves_caches_built_alike(left_chunks, generator):
    """A self and a cross cache stepped with the plan a third cache made give, bit for bit, what
    each gives planning its own step; a cache of another geometry refuses the plan."""
    seed = generator.initial_seed()
    batch, chunk = 3, 2
    make = dict(batch=batch, heads_k=HEADS_K, head_dim=DIM, left_chunks=left_chunks, capacity_frames=32)
    planner = StaticSelfAttentionCache(chunk=chunk, **make)
    planned = [
        StaticSelfAttentionCache(chunk=chunk, **make),
        StaticCrossAttentionCache(chunk_q=chunk, chunk_k=chunk, **make),
    ]
    alone = [
        StaticSelfAttentionCache(chunk=chunk, **make),
        StaticCrossAttentionCache(chunk_q=chunk, chunk_k=chunk, **make),
    ]
    for step in range(12):
        counts = torch.tensor([chunk, 0 if step % 3 == 1 else chunk, chunk])
        q = torch.randn(batch, chunk, HEADS_Q, DIM, generator=generator)
        k, v = (torch.randn(batch, chunk, HEADS_K, DIM, generator=generator) for _ in range(2))
        plan = planner.plan(counts, chunk, HEADS_Q)
        planner.step(q, k, v, lengths=counts, plan=plan)
        got = [planned[0].step(q, k, v, lengths=counts, plan=plan)]
        planned[1].append(k, v, lengths=counts, plan=plan)
        got.append(planned[1].attend(q, lengths=counts, plan=plan))
        want = [alone[0].step(q, k, v, lengths=counts)]
        alone[1].append(k, v, lengths=counts)
        want.append(alone[1].attend(q, lengths=counts))
        for name, a, b in zip(("self", "cross"), got, want, strict=True):
            assert torch.equal(a, b), f"seed {seed}, step {step}: the {name} cache differs with a shared plan"
    for cache, twin in zip(planned, alone, strict=True):
        assert torch.equal(cache.key_frames, twin.key_frames) and torch.equal(
            cache.query_frames, twin.query_frames
        )
    other = StaticSelfAttentionCache(chunk=chunk + 1, **make)
    with pytest.raises(ValueError, match="another geometry"):
        other.step(q, k, v, lengths=counts, plan=plan)
