"""Every backend against the float64 reference: forward, LSE and gradients, on fresh inputs."""

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# Output tolerance relative to the largest reference value: float32 is near-exact, the
# half-precision formats carry 8 (bf16) or 11 (fp16) mantissa bits.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}

# (name, batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, spec)
CASES = [
    ("chunk4", 2, 24, 24, 4, 4, 32, ChunkSpec(4)),
    ("odd-lengths", 2, 37, 37, 2, 2, 16, ChunkSpec(5)),
    ("chunk1-causal", 1, 29, 29, 2, 2, 16, ChunkSpec(1)),
    ("chunk-ge-length", 2, 19, 19, 2, 1, 16, ChunkSpec(64)),
    ("gqa-left", 2, 40, 40, 6, 2, 32, ChunkSpec(3, left_chunks=2)),
    ("mqa", 1, 33, 33, 4, 1, 64, ChunkSpec(8)),
    ("cross-2-4", 2, 18, 36, 4, 2, 32, ChunkSpec(2, chunk_k=4)),
    ("kv-cache-step", 3, 5, 41, 2, 2, 32, ChunkSpec(4, q_offset=36)),
    (
        "per-sequence",
        3,
        30,
        30,
        2,
        2,
        16,
        ChunkSpec(
            torch.tensor([1, 4, 7], dtype=torch.int32),
            left_chunks=1,
            q_offset=torch.tensor([0, 3, 9], dtype=torch.int32),
        ),
    ),
    # Queries ahead of every key under a left limit see nothing: zeros, LSE -inf.
    ("empty-rows", 2, 12, 8, 2, 2, 16, ChunkSpec(2, left_chunks=0, q_offset=4)),
]
CASE_IDS = [c[0] for c in CASES]


def make_inputs(case, dtype, device, generator, requires_grad=False):
    _, batch, sq, sk, hq, hk, d, spec = case
    q = torch.randn(batch, sq, hq, d, generator=generator)
    k = torch.randn(batch, sk, hk, d, generator=generator)
    v = torch.randn(batch, sk, hk, d, generator=generator)
    out = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v)]
    return (*out, spec)


def to_device(spec: ChunkSpec, device) -> ChunkSpec:
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x

    return ChunkSpec(
        move(spec.chunk_q), move(spec.chunk_k), spec.left_chunks, move(spec.q_offset), move(spec.k_offset)
    )


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    if want.numel() == 0:
        return
    scale = want.abs().max().clamp(min=1e-6)
    error = ((got.double() - want.double()).abs().max() / scale).item()
    assert error <= tol, f"{what}: relative error {error:.2e} > {tol:.0e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_reference(case, backend, dtype, device, generator):
    q, k, v, spec = make_inputs(case, dtype, device, generator)
    spec = to_device(spec, device)
    want, want_lse = chunk_attention(q, k, v, spec, backend="reference", return_lse=True)
    if backend == "flex":
        got, lse = chunk_attention(q, k, v, spec, backend=backend, return_lse=True)
        finite = torch.isfinite(want_lse)
        assert torch.equal(torch.isfinite(lse), finite)
        assert (lse[~finite] == float("-inf")).all()
        assert_close(lse[finite], want_lse[finite], 10 * TOLERANCE[dtype], "lse")
    else:
        got = chunk_attention(q, k, v, spec, backend=backend)
    assert got.shape == q.shape and got.dtype == dtype
    assert_close(got, want, TOLERANCE[dtype], f"{backend} output")


def gradients(q, k, v, spec, backend, grad_out):
    out = chunk_attention(q, k, v, spec, backend=backend)
    return torch.autograd.grad(out, (q, k, v), grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["sdpa", pytest.param("flex", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_matches_reference(case, backend, dtype, device, generator):
    if backend == "flex" and device == "cpu":
        pytest.skip("FlexAttention has no CPU backward (an error test covers that)")
    q, k, v, spec = make_inputs(case, dtype, device, generator, requires_grad=True)
    spec = to_device(spec, device)
    grad_out = torch.randn(q.shape, generator=generator).to(device=device, dtype=dtype)
    want = gradients(q, k, v, spec, "reference", grad_out)
    got = gradients(q, k, v, spec, backend, grad_out)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert_close(g, w, GRAD_TOLERANCE[dtype], f"d{name}")


def test_reference_matches_explicit_softmax(generator):
    """The oracle itself, against a loop over rows written with plain softmax."""
    q = torch.randn(1, 9, 2, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(1, 11, 1, 8, generator=generator, dtype=torch.float64)
    v = torch.randn(1, 11, 1, 8, generator=generator, dtype=torch.float64)
    spec = ChunkSpec(3, chunk_k=4, left_chunks=1)
    out, lse = chunk_attention(q, k, v, spec, backend="reference", return_lse=True)
    for h in range(2):
        for i in range(9):
            keys = [j for j in range(11) if i // 3 - 1 <= j // 4 <= i // 3]
            scores = torch.stack([q[0, i, h] @ k[0, j, 0] for j in keys]) / 8**0.5
            probs = torch.softmax(scores, 0)
            expected = sum(p * v[0, j, 0] for p, j in zip(probs, keys, strict=True))
            assert torch.allclose(out[0, i, h], expected, atol=1e-12)
            assert torch.allclose(lse[0, h, i], torch.logsumexp(scores, 0), atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
def test_empty_rows_give_zeros_and_finite_gradients(backend, device, generator):
    q, k, v, spec = make_inputs(CASES[-1], torch.float32, device, generator, requires_grad=True)
    if backend == "flex" and device == "cpu":
        q, k, v = q.detach(), k.detach(), v.detach()
        out, lse = chunk_attention(q, k, v, spec, backend=backend, return_lse=True)
    else:
        out = chunk_attention(q, k, v, spec, backend=backend)
        out.sum().backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()
        lse = chunk_attention(q, k, v, spec, backend="reference", return_lse=True)[1]
    empty = ~spec.dense_mask(12, 8, batch=2).any(-1)  # (B, Sq)
    assert empty.any() and (~empty).any()
    assert (out[empty] == 0).all()
    assert (lse.transpose(1, 2)[empty] == float("-inf")).all()


def pack(tensors, lengths):
    return torch.cat([t[:n] for t, n in zip(tensors, lengths, strict=True)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
def test_packed_varlen_equals_sequences_one_by_one(backend, device, generator):
    lengths_q = [7, 0, 19, 12]
    lengths_k = [7, 3, 25, 12]
    heads_q, heads_k, d = 4, 2, 16
    spec = ChunkSpec(
        torch.tensor([2, 3, 4, 5], dtype=torch.int32),
        left_chunks=2,
        q_offset=torch.tensor([0, 3, 6, 0], dtype=torch.int32),
    )
    qs = [torch.randn(n, heads_q, d, generator=generator) for n in lengths_q]
    ks = [torch.randn(n, heads_k, d, generator=generator) for n in lengths_k]
    vs = [torch.randn(n, heads_k, d, generator=generator) for n in lengths_k]
    extra_rows = 3  # rows after the last sequence: left as zeros
    q = torch.cat([pack(qs, lengths_q), torch.randn(extra_rows, heads_q, d, generator=generator)]).to(device)
    k, v = pack(ks, lengths_k).to(device), pack(vs, lengths_k).to(device)
    cu_q = torch.tensor([0, 7, 7, 26, 38], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 7, 10, 35, 47], dtype=torch.int32, device=device)
    spec = to_device(spec, device)
    if backend == "flex" or backend == "reference":
        out, lse = chunk_attention(
            q, k, v, spec, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend, return_lse=True
        )
        assert lse.shape == (heads_q, q.shape[0])
    else:
        out = chunk_attention(q, k, v, spec, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend)
    assert out.shape == q.shape
    assert (out[38:] == 0).all()
    for b in range(4):
        one = ChunkSpec(int(spec.chunk_q[b]), left_chunks=2, q_offset=int(spec.q_offset[b]))
        alone = chunk_attention(
            qs[b][None].to(device), ks[b][None].to(device), vs[b][None].to(device), one, backend="reference"
        )[0]
        assert_close(out[cu_q[b] : cu_q[b + 1]], alone, 2e-5, f"sequence {b}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sdpa_packed_backward_matches_reference(dtype, generator):
    q = torch.randn(30, 2, 16, generator=generator).to(dtype).requires_grad_()
    k = torch.randn(26, 1, 16, generator=generator).to(dtype).requires_grad_()
    v = torch.randn(26, 1, 16, generator=generator).to(dtype).requires_grad_()
    cu_q = torch.tensor([0, 12, 30], dtype=torch.int32)
    cu_k = torch.tensor([0, 8, 26], dtype=torch.int32)
    spec = ChunkSpec(3, chunk_k=2, q_offset=torch.tensor([0, 4], dtype=torch.int32))
    grad_out = torch.randn(q.shape, generator=generator).to(dtype)
    kw = {"cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    want = torch.autograd.grad(chunk_attention(q, k, v, spec, backend="reference", **kw), (q, k, v), grad_out)
    got = torch.autograd.grad(chunk_attention(q, k, v, spec, backend="sdpa", **kw), (q, k, v), grad_out)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert_close(g, w, GRAD_TOLERANCE[dtype], f"d{name}")


def test_softmax_scale_is_applied(generator):
    q, k, v, spec = make_inputs(CASES[0], torch.float32, "cpu", generator)
    want = chunk_attention(q * 0.5 * 32**0.5, k, v, spec, backend="reference")
    for backend in ("sdpa", "flex"):
        got = chunk_attention(q, k, v, spec, backend=backend, softmax_scale=0.5)
        assert_close(got, want, 2e-5, backend)


def test_zero_length_inputs_give_empty_or_zero_outputs():
    q = torch.randn(2, 4, 2, 8)
    empty_k = torch.randn(2, 0, 2, 8)
    out, lse = chunk_attention(q, empty_k, empty_k, ChunkSpec(2), return_lse=True)
    assert (out == 0).all() and (lse == float("-inf")).all()
    out = chunk_attention(torch.randn(2, 0, 2, 8), q, q, ChunkSpec(2))
    assert out.shape == (2, 0, 2, 8)


def test_auto_prefers_sdpa_on_cpu_and_never_fails_where_a_backend_can_run(generator):
    from s2s.attention.api import select_backend
    from s2s.attention.problem import make_problem

    q, k, v, spec = make_inputs(CASES[0], torch.float32, "cpu", generator, requires_grad=True)
    assert select_backend(make_problem(q, k, v, spec), "auto", return_lse=False).name == "sdpa"
    # Gradients and LSE on CPU: only the reference does both.
    assert select_backend(make_problem(q, k, v, spec), "auto", return_lse=True).name == "reference"
    q, k, v = q.detach(), k.detach(), v.detach()
    assert select_backend(make_problem(q, k, v, spec), "auto", return_lse=True).name == "flex"
    q.requires_grad_()
    out, lse = chunk_attention(q, k, v, spec, return_lse=True)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and lse.shape == (2, 4, 24)


@pytest.mark.gpu
def test_auto_prefers_cute_then_flex_for_long_and_sdpa_for_short_on_gpu(generator):
    """Our kernel wherever it runs (Hopper, CuTe DSL installed); otherwise flex for long query
    runs and SDPA for a streaming step's few rows."""
    from s2s.attention.api import select_backend
    from s2s.attention.backends import BACKENDS
    from s2s.attention.problem import make_problem

    q = torch.randn(1, 256, 2, 64, device="cuda", dtype=torch.bfloat16)
    long_call = make_problem(q, q, q, ChunkSpec(16))
    cute_runs = BACKENDS["cute"].unsupported_reason(long_call, False) is None
    assert select_backend(long_call, "auto", return_lse=False).name == ("cute" if cute_runs else "flex")
    short_call = make_problem(q[:, :4], q, q, ChunkSpec(16))
    assert select_backend(short_call, "auto", return_lse=False).name == ("cute" if cute_runs else "sdpa")
