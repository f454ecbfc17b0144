"""Streaming through the KV caches gives what one offline pass over the whole sequence gives."""

import pytest
import torch

from s2s.attention import ChunkSpec, CrossAttentionCache, SelfAttentionCache, chunk_attention

HEADS_Q, HEADS_K, DIM = 4, 2, 16


def offline(q, k, v, spec):
    return chunk_attention(q[None], k[None], v[None], spec, backend="reference")[0]


def assert_close(got, want, tol=1e-5):
    assert got.shape == want.shape
    if want.numel():
        assert (got - want).abs().max().item() <= tol


def random_steps(generator, total, chunk, max_chunks):
    """Split ``total`` frames into steps of 0..max_chunks whole chunks; the last may be short."""
    steps, left = [], total
    while left > 0:
        n = min(left, chunk * int(torch.randint(0, max_chunks + 1, (1,), generator=generator)))
        steps.append(n)
        left -= n
    return steps


@pytest.mark.parametrize("left_chunks", [None, 0, 1, 3])
@pytest.mark.parametrize("chunk,step", [(4, 4), (4, 8), (1, 1), (1, 3), (3, 6)])
def test_self_attention_cache_equals_one_shot(chunk, step, left_chunks, generator):
    batch, total = 3, 29  # 29 frames: the last step is a short chunk, marked final
    q = torch.randn(batch, total, HEADS_Q, DIM, generator=generator)
    k = torch.randn(batch, total, HEADS_K, DIM, generator=generator)
    v = torch.randn(batch, total, HEADS_K, DIM, generator=generator)
    cache = SelfAttentionCache(batch, HEADS_K, DIM, chunk, left_chunks)
    outs = []
    bound = None if left_chunks is None else (left_chunks + 1) * chunk - 1
    for start in range(0, total, step):
        part = slice(start, start + step)
        outs.append(cache.step(q[:, part], k[:, part], v[:, part], final=start + step >= total))
        if bound is not None:
            assert int(cache.store.lengths.max()) <= bound
            assert cache.store.capacity <= bound + step
    streamed = torch.cat(outs, dim=1)
    want = chunk_attention(q, k, v, ChunkSpec(chunk, left_chunks=left_chunks), backend="reference")
    assert_close(streamed, want)


def test_streams_of_different_lengths_and_chunks(generator):
    """Each stream advances by its own number of whole chunks per step, with its own chunk size."""
    batch, max_chunks = 3, 2
    totals = [23, 9, 31]
    chunks = [2, 4, 3]
    left = 2
    data = [
        [torch.randn(n, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)] for n in totals
    ]
    cache = SelfAttentionCache(batch, HEADS_K, DIM, torch.tensor(chunks, dtype=torch.int32), left_chunks=left)
    plans = [random_steps(generator, n, c, max_chunks) for n, c in zip(totals, chunks, strict=True)]
    n_steps = max(len(p) for p in plans)
    plans = [p + [0] * (n_steps - len(p)) for p in plans]
    width = max_chunks * max(chunks)
    streamed = [[] for _ in range(batch)]
    consumed = [0] * batch
    for s in range(n_steps):
        counts = torch.tensor([plans[b][s] for b in range(batch)])
        padded = [torch.zeros(batch, width, h, DIM) for h in (HEADS_Q, HEADS_K, HEADS_K)]
        for b in range(batch):
            n, c = plans[b][s], consumed[b]
            for slot, tensor in zip(padded, data[b], strict=True):
                slot[b, :n] = tensor[c : c + n]
        final = torch.tensor([consumed[b] + plans[b][s] == totals[b] for b in range(batch)])
        out = cache.step(*padded, lengths=counts, final=final)
        for b in range(batch):
            n = plans[b][s]
            streamed[b].append(out[b, :n])
            assert (out[b, n:] == 0).all()
            consumed[b] += n
        assert int(cache.store.lengths.max()) <= (left + 1) * max(chunks) - 1
    for b in range(batch):
        want = offline(*data[b], ChunkSpec(chunks[b], left_chunks=left))
        assert_close(torch.cat(streamed[b]), want)


@pytest.mark.parametrize("left_chunks", [None, 1])
def test_cross_attention_cache_equals_one_shot(left_chunks, generator):
    """Encoder chunks of 4 frames (25 Hz), decoder chunks of 2 frames (12.5 Hz)."""
    batch, n_chunks, chunk_q, chunk_k = 2, 7, 2, 4
    q = torch.randn(batch, n_chunks * chunk_q, HEADS_Q, DIM, generator=generator)
    k = torch.randn(batch, n_chunks * chunk_k, HEADS_K, DIM, generator=generator)
    v = torch.randn(batch, n_chunks * chunk_k, HEADS_K, DIM, generator=generator)
    cache = CrossAttentionCache(batch, HEADS_K, DIM, chunk_q, chunk_k, left_chunks)
    outs = []
    for n in range(n_chunks):
        enc = slice(n * chunk_k, (n + 1) * chunk_k)
        cache.append(k[:, enc], v[:, enc])
        outs.append(cache.attend(q[:, n * chunk_q : (n + 1) * chunk_q]))
        if left_chunks is not None:
            assert int(cache.store.lengths.max()) <= (left_chunks + 1) * chunk_k
    want = chunk_attention(q, k, v, ChunkSpec(chunk_q, chunk_k, left_chunks), backend="reference")
    assert_close(torch.cat(outs, dim=1), want)


def test_reset_starts_one_stream_over(generator):
    batch, chunk = 2, 3
    cache = SelfAttentionCache(batch, HEADS_K, DIM, chunk, left_chunks=1)
    first = [torch.randn(batch, 6, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    cache.step(*first)
    cache.reset(torch.tensor([False, True]))
    second = [torch.randn(batch, 6, h, DIM, generator=generator) for h in (HEADS_Q, HEADS_K, HEADS_K)]
    out = cache.step(*second)
    spec = ChunkSpec(chunk, left_chunks=1)
    fresh = offline(*(t[1] for t in second), spec)
    assert_close(out[1], fresh)
    continued = offline(*(torch.cat([a[0], b[0]]) for a, b in zip(first, second, strict=True)), spec)
    assert_close(out[0], continued[6:])


def test_cache_rejects_mismatched_inputs():
    cache = SelfAttentionCache(2, HEADS_K, DIM, 4)
    q = torch.randn(2, 4, HEADS_Q, DIM)
    kv = torch.randn(2, 4, HEADS_K, DIM)
    with pytest.raises(ValueError, match=r"cache holds torch\.float32"):
        cache.step(q.double(), kv.double(), kv.double())
    with pytest.raises(ValueError, match=r"k must be \(B=2, n, Hk=2, D=16\)"):
        cache.step(q, torch.randn(2, 4, 3, DIM), kv)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        cache.step(q, kv, kv, lengths=torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="chunk_q must be positive"):
        SelfAttentionCache(2, HEADS_K, DIM, 0)


def test_steps_must_cover_whole_chunks():
    cache = SelfAttentionCache(2, HEADS_K, DIM, 4)
    q, kv = torch.randn(2, 3, HEADS_Q, DIM), torch.randn(2, 3, HEADS_K, DIM)
    with pytest.raises(ValueError, match=r"ends mid-chunk for stream\(s\) \[0, 1\]"):
        cache.step(q, kv, kv)
    assert int(cache.store.lengths.max()) == 0  # the refused step changed nothing
    cache.step(q, kv, kv, final=torch.tensor([True, False]), lengths=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"stream\(s\) \[0\] already had their final step"):
        cache.step(q, kv, kv, final=True)
    cache.reset(torch.tensor([True, False]))
    cache.step(q, kv, kv, final=True)


def test_final_takes_bool_flags_only():
    """Indices or 0/1 numbers as `final` would end the wrong streams if cast: refused, nothing changes."""
    cache = SelfAttentionCache(2, HEADS_K, DIM, 4)
    q, kv = torch.randn(2, 3, HEADS_Q, DIM), torch.randn(2, 3, HEADS_K, DIM)
    for wrong in (torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), torch.tensor([True, False, True])):
        with pytest.raises(
            ValueError, match=r"final must be a bool or a bool tensor with one flag per stream \(2,\)"
        ):
            cache.step(q, kv, kv, final=wrong, lengths=torch.tensor([3, 0]))
        assert int(cache.store.lengths.max()) == 0
    cache.step(q, kv, kv, final=torch.tensor([True, False]), lengths=torch.tensor([3, 0]))
    assert cache.store.lengths.tolist() == [3, 0]


def test_decoder_cannot_run_ahead_of_the_encoder():
    cache = CrossAttentionCache(1, HEADS_K, DIM, chunk_q=2, chunk_k=4)
    cache.append(torch.randn(1, 4, HEADS_K, DIM), torch.randn(1, 4, HEADS_K, DIM))
    cache.attend(torch.randn(1, 2, HEADS_Q, DIM))
    with pytest.raises(ValueError, match="append the encoder chunk first"):
        cache.attend(torch.randn(1, 2, HEADS_Q, DIM))
    cache.append(torch.randn(1, 1, HEADS_K, DIM), torch.randn(1, 1, HEADS_K, DIM), final=True)
    cache.attend(torch.randn(1, 4, HEADS_Q, DIM))  # the encoder ended: the decoder may go on
