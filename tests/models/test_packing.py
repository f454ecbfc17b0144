"""PackedLayout against hand computations, `attend` with a layout against the boolean-mask
packing it replaced, and chunk_attention's host offsets against reading them from the device."""

import pytest
import torch
from torch import nn

import s2s.models.attention as layers
from s2s.attention import ChunkSpec, chunk_attention
from s2s.models.attention import attend
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.models.packing import PackedLayout


def fresh_seeds(generator: torch.Generator, count: int = 6) -> range:
    """`count` consecutive seeds from a fresh random start (each failure message names its seed)."""
    start = int(torch.randint(0, 2**31 - count, (1,), generator=generator))
    return range(start, start + count)


class NoHostReads(torch.Tensor):
    """A tensor whose values must stay on its device: reading them on the host fails the test."""

    READS = frozenset(
        {
            torch.Tensor.tolist,
            torch.Tensor.item,
            torch.Tensor.__int__,
            torch.Tensor.__index__,
            torch.Tensor.__bool__,
            torch.Tensor.__float__,
            torch.Tensor.nonzero,
            torch.nonzero,
        }
    )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls.READS:
            raise AssertionError(f"{getattr(func, '__name__', func)} read a device tensor on the host")
        return super().__torch_function__(func, types, args, kwargs)


def record_attention_paths(monkeypatch) -> list[str]:
    """Patch the model layers' chunk_attention to record, per call, whether it ran "packed" or
    "dense" (the list fills as the model runs; monkeypatch undoes the patch)."""
    calls: list[str] = []
    original = layers.chunk_attention

    def recording(*args, **kwargs):
        calls.append("packed" if kwargs.get("cu_seqlens_q") is not None else "dense")
        return original(*args, **kwargs)

    monkeypatch.setattr(layers, "chunk_attention", recording)
    return calls


def random_lengths(generator: torch.Generator, batch: int, frames: int) -> torch.Tensor:
    """Lengths in [0, frames] with one full-length and one empty sequence among them."""
    lengths = torch.randint(0, frames + 1, (batch,), generator=generator)
    order = torch.randperm(batch, generator=generator)
    lengths[order[0]] = frames
    lengths[order[1]] = 0
    return lengths


def test_layout_is_the_hand_computed_packing(generator):
    for seed in fresh_seeds(generator):
        g = torch.Generator().manual_seed(seed)
        batch, frames = (
            int(torch.randint(2, 7, (1,), generator=g)),
            int(torch.randint(1, 13, (1,), generator=g)),
        )
        lengths = random_lengths(g, batch, frames)
        layout = PackedLayout.from_lengths(lengths, frames)
        values = lengths.tolist()
        rows = [b * frames + t for b in range(batch) for t in range(values[b])]
        offsets = [0]
        for n in values:
            offsets.append(offsets[-1] + n)
        assert layout.indices.dtype == torch.int64 and layout.cu_seqlens.dtype == torch.int32, f"seed {seed}"
        assert layout.indices.tolist() == rows, f"seed {seed}: lengths {values}"
        assert layout.cu_seqlens.tolist() == offsets, f"seed {seed}: lengths {values}"
        assert layout.offsets == tuple(offsets) and all(type(x) is int for x in layout.offsets), (
            f"seed {seed}"
        )
        assert layout.has_padding == any(n < frames for n in values), f"seed {seed}"
        assert (layout.batch, layout.frames, layout.total) == (batch, frames, sum(values)), f"seed {seed}"


def test_layout_of_a_full_batch_has_no_padding():
    layout = PackedLayout.from_lengths(torch.tensor([5, 5, 5], dtype=torch.int32), 5)
    assert not layout.has_padding
    assert layout.indices.tolist() == list(range(15))
    assert layout.offsets == (0, 5, 10, 15)


def test_layout_refuses_bad_lengths():
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        PackedLayout.from_lengths(torch.ones(2, 2, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\].*\[3, -1\]"):
        PackedLayout.from_lengths(torch.tensor([3, -1]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\].*\[5, 2\]"):
        PackedLayout.from_lengths(torch.tensor([5, 2]), 4)
    with pytest.raises(TypeError, match=r"integer tensor.*float32"):
        PackedLayout.from_lengths(torch.tensor([3.0, 2.0]), 4)
    with pytest.raises(TypeError, match=r"integer tensor.*list"):
        PackedLayout.from_lengths([3, 2], 4)


def masked_attend(q, k, v, spec, lengths, backend):
    """`attend` as it was before PackedLayout: boolean-mask gathers and scatter."""
    if lengths is None or bool((lengths == q.shape[1]).all()):
        return chunk_attention(q, k, v, spec, backend=backend)
    valid = torch.arange(q.shape[1], device=q.device)[None, :] < lengths[:, None]
    cu_seqlens = nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    packed = chunk_attention(
        q[valid], k[valid], v[valid], spec, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, backend=backend
    )
    out = q.new_zeros(q.shape)
    out[valid] = packed
    return out


def _qkv(g: torch.Generator, batch: int, frames: int, heads_q=4, heads_k=2, dim=8):
    shapes = ((batch, frames, heads_q, dim), (batch, frames, heads_k, dim), (batch, frames, heads_k, dim))
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def test_attend_with_a_layout_is_the_boolean_mask_packing(generator):
    """Outputs and gradients of q, k, v equal the old computation; padded rows are exact zeros."""
    for seed in fresh_seeds(generator):
        g = torch.Generator().manual_seed(seed)
        batch, frames = 4, int(torch.randint(3, 14, (1,), generator=g))
        lengths = random_lengths(g, batch, frames)
        chunk = torch.randint(1, 5, (batch,), generator=g, dtype=torch.int32) if seed % 2 else 3
        spec = ChunkSpec(chunk_q=chunk, left_chunks=None if seed % 3 else 1)
        q, k, v = _qkv(g, batch, frames)
        weights = torch.randn(batch, frames, 4, 8, generator=g, dtype=torch.float64)

        out = attend(q, k, v, spec, PackedLayout.from_lengths(lengths, frames), "reference")
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
        expected = masked_attend(q, k, v, spec, lengths, "reference")
        expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))

        where = f"seed {seed}, lengths {lengths.tolist()}, chunk {chunk}"
        assert out.shape == expected.shape and torch.isfinite(out).all(), where
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, msg=lambda m, w=where: f"{w}: {m}")
        padded = torch.arange(frames)[None, :] >= lengths[:, None]
        assert (out[padded] == 0).all(), where
        for name, got, want in zip("qkv", grads, expected_grads, strict=True):
            torch.testing.assert_close(
                got, want, rtol=1e-12, atol=1e-12, msg=lambda m, n=name, w=where: f"{w}: d{n}: {m}"
            )


def test_attend_with_a_layout_never_reads_the_device():
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([5, 0, 3])
    layout = PackedLayout.from_lengths(lengths, 5)
    guarded = PackedLayout(
        frames=layout.frames,
        has_padding=layout.has_padding,
        indices=layout.indices.as_subclass(NoHostReads),
        cu_seqlens=layout.cu_seqlens.as_subclass(NoHostReads),
        offsets=layout.offsets,
        valid=layout.valid.as_subclass(NoHostReads),
        seqused=layout.seqused.as_subclass(NoHostReads),
    )
    q, k, v = (t.detach() for t in _qkv(g, 3, 5))
    for backend in ("reference", "sdpa"):
        out = attend(q, k, v, ChunkSpec(2), guarded, backend).as_subclass(torch.Tensor)
        expected = masked_attend(q, k, v, ChunkSpec(2), lengths, backend)
        torch.testing.assert_close(out, expected, msg=lambda m, b=backend: f"seed 7, {b}: {m}")


def test_attend_without_padding_is_one_dense_call():
    g = torch.Generator().manual_seed(11)
    q, k, v = (t.detach() for t in _qkv(g, 2, 6))
    out = attend(q, k, v, ChunkSpec(2), PackedLayout.from_lengths(torch.tensor([6, 6]), 6), "reference")
    torch.testing.assert_close(
        out, chunk_attention(q, k, v, ChunkSpec(2), backend="reference"), msg="seed 11"
    )


def test_attend_refuses_a_layout_of_another_batch():
    q = torch.zeros(2, 6, 4, 8)
    with pytest.raises(ValueError, match=r"layout is for \(B, T\) = \(2, 5\)"):
        attend(q, q, q, ChunkSpec(2), PackedLayout.from_lengths(torch.tensor([5, 3]), 5), "reference")


def _packed(g: torch.Generator, batch: int, spare: int):
    lengths = random_lengths(g, batch, 9)
    offsets = [0, *torch.cumsum(lengths, 0).tolist()]
    total = offsets[-1] + spare
    q = torch.randn(total, 4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(total, 2, 8, generator=g, dtype=torch.float64)
    v = torch.randn(total, 2, 8, generator=g, dtype=torch.float64)
    return q, k, v, torch.tensor(offsets, dtype=torch.int32), offsets


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
def test_chunk_attention_with_host_offsets_is_the_same_call(backend, generator):
    """Same output (and LSE where the backend gives one), and the cu tensors are never read."""
    for seed in fresh_seeds(generator):
        g = torch.Generator().manual_seed(seed)
        q, k, v, cu, offsets = _packed(g, batch=3, spare=seed % 3)
        spec = ChunkSpec(chunk_q=int(torch.randint(1, 4, (1,), generator=g)), left_chunks=seed % 2 or None)
        lse = backend != "sdpa"
        expected = chunk_attention(
            q, k, v, spec, cu_seqlens_q=cu, cu_seqlens_k=cu, backend=backend, return_lse=lse
        )
        guarded = cu.as_subclass(NoHostReads)
        got = chunk_attention(
            q, k, v, spec, cu_seqlens_q=guarded, cu_seqlens_k=guarded, cu_seqlens_q_host=offsets,
            cu_seqlens_k_host=tuple(offsets), backend=backend, return_lse=lse,
        )  # fmt: skip
        got, expected = (got, expected) if lse else ((got,), (expected,))
        for a, b in zip(got, expected, strict=True):
            a = a.as_subclass(torch.Tensor)
            assert a.shape == b.shape, f"seed {seed}"
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, s=seed: f"seed {s}: {m}")


def test_the_problem_keeps_the_host_offsets():
    from s2s.attention.problem import make_problem

    g = torch.Generator().manual_seed(4)
    q, k, v, cu, offsets = _packed(g, batch=3, spare=2)
    for host in (None, offsets):
        problem = make_problem(q, k, v, ChunkSpec(2), cu, cu, cu_seqlens_q_host=host, cu_seqlens_k_host=host)
        assert problem.offsets_q == problem.offsets_k == tuple(offsets), f"seed 4, host {host}"
        assert (problem.rows_q, problem.max_seqlen_q) == (offsets[-1], 9), f"seed 4, host {host}"
    assert make_problem(q[None], k[None], v[None], ChunkSpec(2)).offsets_q is None


def test_chunk_attention_refuses_host_offsets_that_disagree():
    g = torch.Generator().manual_seed(3)
    q, k, v, cu, offsets = _packed(g, batch=3, spare=0)
    spec = ChunkSpec(2)

    def call(host_q, host_k=offsets, cu_q=cu, cu_k=cu):
        return chunk_attention(
            q, k, v, spec, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, cu_seqlens_q_host=host_q,
            cu_seqlens_k_host=host_k, backend="reference",
        )  # fmt: skip

    with pytest.raises(ValueError, match=r"cu_seqlens_q_host has 3 entries but cu_seqlens_q has 4"):
        call(offsets[:-1])
    with pytest.raises(ValueError, match=r"cu_seqlens_k_host ends at .* only \d+ rows"):
        call(offsets, [0, 1, 2, q.shape[0] + 1])
    with pytest.raises(ValueError, match="cu_seqlens_q_host must start at 0"):
        call([1, *offsets[1:]])
    with pytest.raises(ValueError, match="cu_seqlens_q_host must be non-decreasing"):
        call([0, 3, 2, 4])
    with pytest.raises(TypeError, match="cu_seqlens_q_host must be a list or tuple of ints"):
        call(cu)
    with pytest.raises(ValueError, match="pass them with cu_seqlens_q and cu_seqlens_k"):
        chunk_attention(q[None], k[None], v[None], spec, cu_seqlens_q_host=offsets, cu_seqlens_k_host=offsets)


def test_a_model_forward_builds_one_layout_for_every_attention_call(monkeypatch):
    """The lengths are packed once per pass, and each attention call gets the host offsets."""
    built, calls = [], []
    original_build, original_attention = PackedLayout.from_lengths.__func__, layers.chunk_attention

    def build(cls, lengths, frames, device=None):
        built.append(lengths.tolist())
        return original_build(cls, lengths, frames, device)

    def attention(q, k, v, spec, **kwargs):
        calls.append(kwargs.get("cu_seqlens_q_host"))
        return original_attention(q, k, v, spec, **kwargs)

    monkeypatch.setattr(PackedLayout, "from_lengths", classmethod(build))
    monkeypatch.setattr(layers, "chunk_attention", attention)
    config = DuplexConfig(dim=32, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)
    model = DuplexModel(config).eval()
    g = torch.Generator().manual_seed(5)
    mel = torch.randn(2, 4 * 10, config.n_mels, generator=g)
    feedback = torch.randn(2, 10, config.feedback_dim, generator=g)
    with torch.no_grad():
        model(mel, feedback, lengths=torch.tensor([10, 7]), chunk=2)
    assert built == [[10, 7]]
    assert calls == [(0, 10, 17)] * 6  # encoder self, decoder self and cross attention


def test_attend_runs_an_aligned_padded_batch_unpacked_with_the_packed_result(generator, monkeypatch):
    """Lengths that are multiples of each sequence's chunk hide every padded key, so `attend`
    makes one dense call (no cu_seqlens) and still equals the packing: outputs, zero padded rows,
    and gradients; a length off the chunk grid falls back to the packed call."""
    calls = record_attention_paths(monkeypatch)
    for seed in fresh_seeds(generator):
        g = torch.Generator().manual_seed(seed)
        batch, frames = 4, 24
        chunk = torch.tensor([1, 2, 4, 8], dtype=torch.int32)[torch.randperm(4, generator=g)]
        spec = ChunkSpec(chunk_q=chunk, left_chunks=None if seed % 2 else 2)
        multiples = torch.randint(0, 4, (batch,), generator=g)
        lengths = torch.minimum(chunk.long() * multiples, torch.tensor(frames))
        lengths[int(torch.randint(batch, (1,), generator=g))] = frames - 8  # padding in every batch
        for aligned in (True, False):
            if not aligned:  # one sequence's length off its chunk grid (chunk > 1): packing needed
                b = int((chunk > 1).nonzero()[0])
                lengths[b] = int(chunk[b]) * 2 + 1
            q, k, v = _qkv(g, batch, frames)
            weights = torch.randn(batch, frames, 4, 8, generator=g, dtype=torch.float64)
            calls.clear()
            out = attend(q, k, v, spec, PackedLayout.from_lengths(lengths, frames), "reference")
            where = f"seed {seed}, lengths {lengths.tolist()}, chunk {chunk.tolist()}, aligned {aligned}"
            assert calls == ["dense" if aligned else "packed"], where
            grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
            expected = masked_attend(q, k, v, spec, lengths, "reference")
            expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
            torch.testing.assert_close(
                out, expected, rtol=1e-12, atol=1e-12, msg=lambda m, w=where: f"{w}: {m}"
            )
            padded = torch.arange(frames)[None, :] >= lengths[:, None]
            assert torch.isfinite(out).all() and (out[padded] == 0).all(), where
            for name, got, want in zip("qkv", grads, expected_grads, strict=True):
                torch.testing.assert_close(
                    got, want, rtol=1e-12, atol=1e-12, msg=lambda m, n=name, w=where: f"{w}: d{n}: {m}"
                )


def test_host_lengths_build_the_layout_on_the_device_without_reading_it():
    """Lengths on the host (as the training step passes them) give the same layout as device
    lengths, with its tensors on the requested device; the device copy is never read back."""
    host = torch.tensor([7, 12, 0, 9])
    layout = PackedLayout.from_lengths(host, 12, device="cpu")
    reference = PackedLayout.from_lengths(host.clone(), 12)
    assert layout.offsets == reference.offsets == (0, 7, 19, 19, 28)
    assert torch.equal(layout.indices, reference.indices) and torch.equal(layout.valid, reference.valid)
    assert layout.lengths == (7, 12, 0, 9) and layout.valid.shape == (4, 12)
    assert layout.valid.sum(dim=1).tolist() == [7, 12, 0, 9]
