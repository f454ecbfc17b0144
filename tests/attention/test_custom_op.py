"""The s2s::chunk_attention operator: its forward and backward equal chunk_attention's (float64 on
the CPU through the reference backend, the CuTe kernels against float64 on a Hopper GPU), its
registration passes torch.library.opcheck, and its LSE carries no gradient."""

import importlib.util

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention
from s2s.attention.backends.reference import dense_attention, dense_attention_backward
from s2s.attention.custom_op import chunk_attention_op
from s2s.attention.mask import dense_mask

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _problem(
    g: torch.Generator, dtype=torch.float64, device="cpu", batch=3, seqlen=20, heads=4, kv_heads=2, dim=16
):
    """Random q, k, v and a per-sequence chunk rule with offsets and a history limit; the first
    sequence's keys all lie after its first queries, so those rows see no key."""

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    q = randn(batch, seqlen, heads, dim)
    k, v = randn(batch, seqlen, kv_heads, dim), randn(batch, seqlen, kv_heads, dim)
    chunk_q = torch.randint(1, 9, (batch,), generator=g)
    chunk_k = torch.randint(1, 9, (batch,), generator=g)
    q_offset = torch.randint(0, 12, (batch,), generator=g)
    k_offset = torch.randint(0, 12, (batch,), generator=g)
    chunk_q[0], chunk_k[0], q_offset[0], k_offset[0] = 1, 1, 0, seqlen // 2  # rows 0..seqlen/2-1 see no key
    left = int(torch.randint(0, 4, (), generator=g))
    chunks = [t.to(device) for t in (chunk_q, chunk_k, q_offset, k_offset)]
    spec = ChunkSpec(*(t.to(torch.int32) for t in chunks[:2]), left, *(t.to(torch.int32) for t in chunks[2:]))
    return q, k, v, chunks, left, spec


def test_the_dense_backward_from_the_lse_equals_autograd_of_the_dense_forward(generator):
    seed = generator.initial_seed()
    q, k, v, _, _, spec = _problem(generator)
    mask = spec.dense_mask(q.shape[1], k.shape[1], batch=q.shape[0])
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = dense_attention(*leaves, mask, 0.3)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    want = torch.autograd.grad(out, leaves, grad)
    got = dense_attention_backward(q, k, v, out.detach(), lse.detach(), grad, mask, 0.3)
    assert torch.isinf(lse).any() and (~torch.isinf(lse)).any(), f"seed {seed}: rows with and without keys"
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert g.shape == w.shape and torch.isfinite(g).all(), f"seed {seed}: {name}"
        torch.testing.assert_close(
            g, w, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )


def test_the_operator_gives_chunk_attentions_output_and_gradients(generator):
    """Reference backend, float64: output, LSE and dQ/dK/dV against chunk_attention's autograd."""
    seed = generator.initial_seed()
    q, k, v, chunks, left, spec = _problem(generator)
    grad = torch.randn(q.shape, generator=generator, dtype=torch.float64)
    results = []
    for through_operator in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        if through_operator:
            out, lse = chunk_attention_op(*leaves, *chunks, left, None, "reference")
            assert not lse.requires_grad, "the LSE carries no gradient"
        else:
            out, lse = chunk_attention(*leaves, spec, backend="reference", return_lse=True)
        results.append((out.detach(), lse, *torch.autograd.grad(out, leaves, grad)))
    assert results[1][0].is_contiguous() and results[1][1].is_contiguous(), f"seed {seed}"
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), results[1], results[0], strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype, f"seed {seed}: {name}"
        assert not torch.isnan(got).any(), f"seed {seed}: {name} has unwritten (NaN) elements"
        torch.testing.assert_close(
            got, want, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_operator_registration_passes_opcheck(dtype, generator):
    """Schema, fake (shape-only) implementations, autograd registration and AOT dispatch."""
    q, k, v, chunks, left, _ = _problem(generator, dtype=dtype, batch=2, seqlen=12)
    args = ([t.requires_grad_() for t in (q, k, v)], chunks, left)
    torch.library.opcheck(chunk_attention_op, (*args[0], *args[1], args[2], None, "reference"))
    torch.library.opcheck(chunk_attention_op, (*args[0], *args[1], None, 0.25, "reference"))


def test_the_operator_names_the_backends_it_runs(generator):
    q, k, v, chunks, left, _ = _problem(generator, batch=2, seqlen=8)
    with pytest.raises(ValueError, match=r"runs backends .* got 'sdpa'; call chunk_attention"):
        chunk_attention_op(q, k, v, *chunks, left, None, "sdpa")


def test_a_compiled_function_holds_the_operator_in_one_graph(generator):
    """torch.compile(fullgraph=True) traces through the operator (no split at attention) and the
    compiled output and gradients equal the eager operator's."""
    seed = generator.initial_seed()
    q, k, v, chunks, left, _ = _problem(generator, dtype=torch.float32)
    weight = torch.randn(q.shape[-1], q.shape[-1], generator=generator)

    def block(q, k, v):
        out, _ = chunk_attention_op(torch.tanh(q) @ weight, k, v, *chunks, left, None, "reference")
        return (out * out).sum(-1)

    compiled = torch.compile(block, fullgraph=True)
    results = []
    for run in (block, compiled):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = run(*leaves)
        results.append((out.detach(), *torch.autograd.grad(out.sum(), leaves)))
    for name, got, want in zip(("out", "dq", "dk", "dv"), results[1], results[0], strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )


@pytest.mark.gpu
@pytest.mark.skipif(
    not HOPPER or importlib.util.find_spec("cutlass") is None,
    reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl",
)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_the_cute_operator_equals_float64_math(head_dim, generator):
    """bf16 on the CuTe kernels through the operator: output and gradients against the float64
    dense formula, every element written (NaN-free where the reference is finite)."""
    seed = generator.initial_seed()
    q, k, v, chunks, left, spec = _problem(
        generator, dtype=torch.bfloat16, device="cuda", batch=3, seqlen=200, heads=4, kv_heads=2, dim=head_dim
    )
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = chunk_attention_op(*leaves, *chunks, left, None, "cute")
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to("cuda", torch.bfloat16)
    got = (out, *torch.autograd.grad(out, leaves, grad))
    lengths = torch.full((3,), 200, device="cuda")
    mask = dense_mask(spec.resolve(3, "cuda"), lengths, lengths, 200, 200)
    scale = head_dim**-0.5
    q64, k64, v64 = (t.double() for t in (q, k, v))
    ref_out, ref_lse = dense_attention(q64, k64, v64, mask, scale)
    want = (ref_out, *dense_attention_backward(q64, k64, v64, ref_out, ref_lse, grad.double(), mask, scale))
    finite = ~torch.isinf(ref_lse)
    torch.testing.assert_close(
        lse[finite], ref_lse[finite].float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"seed {seed}: lse: {m}"
    )
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert torch.isfinite(g).all(), f"seed {seed}: {name} has unwritten or non-finite elements"
        error = ((g.double() - w.double()).norm() / w.double().norm().clamp(min=1e-12)).item()
        assert error < 2e-2, f"seed {seed}: {name} differs from float64 by {error:.2e} (relative norm)"


def _used_lengths(g: torch.Generator, batch: int, seqlen: int, device="cpu") -> torch.Tensor:
    """(B,) int32 used query rows: one sequence with none, one with all, the rest drawn."""
    used = torch.randint(1, seqlen, (batch,), generator=g, dtype=torch.int32)
    used[0], used[-1] = seqlen, 0
    return used.to(device)


def _expected_with_used_rows(q, k, v, spec, used, grad, scale):
    """float64 output, LSE and gradients of the rule with query rows past `used` left out: the
    dense formula on inputs whose unused rows are zeroed (finite), those rows masked to no key,
    and their output gradient zero."""
    batch, seqlen = q.shape[:2]
    rows = (torch.arange(seqlen, device=q.device)[None, :] < used.to(q.device)[:, None].long())[
        ..., None, None
    ]
    lengths_k = torch.full((batch,), k.shape[1], device=q.device)
    mask = dense_mask(spec.resolve(batch, q.device), used.long(), lengths_k, seqlen, k.shape[1])
    leaves = [t.double().clone().requires_grad_() for t in (torch.where(rows, q, 0), k, v)]
    out, lse = dense_attention(*leaves, mask, scale)
    grads = torch.autograd.grad(out, leaves, torch.where(rows, grad, 0).double())
    return rows, out.detach(), lse.detach(), grads


def test_the_operator_leaves_query_rows_past_seqused_q_out(generator):
    """Reference backend, float64, NaN in every unused row of q and of the output gradient:
    used rows equal the dense formula, unused rows give output 0, LSE -inf and dQ 0, and nothing
    is NaN."""
    seed = generator.initial_seed()
    q, k, v, chunks, left, spec = _problem(generator)
    used = _used_lengths(generator, q.shape[0], q.shape[1])
    grad = torch.randn(q.shape, generator=generator, dtype=torch.float64)
    rows, want_out, want_lse, want_grads = _expected_with_used_rows(
        q, k, v, spec, used, grad, q.shape[-1] ** -0.5
    )
    q, grad = torch.where(rows, q, float("nan")), torch.where(rows, grad, float("nan"))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = chunk_attention_op(*leaves, *chunks, left, None, "reference", used)
    got_grads = torch.autograd.grad(out, leaves, grad)
    unused = ~rows[:, :, 0, 0]
    assert (out[unused] == 0).all() and (got_grads[0][unused] == 0).all(), f"seed {seed}: unused rows"
    assert torch.isneginf(lse.transpose(1, 2)[unused]).all(), f"seed {seed}: unused rows' LSE"
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)), f"seed {seed}: rows without keys"
    finite = ~torch.isinf(want_lse)
    torch.testing.assert_close(
        lse[finite], want_lse[finite], rtol=1e-10, atol=1e-12, msg=lambda m: f"seed {seed}: {m}"
    )
    for name, got, want in zip(
        ("out", "dq", "dk", "dv"), (out, *got_grads), (want_out, *want_grads), strict=True
    ):
        assert not torch.isnan(got).any(), f"seed {seed}: {name} has NaN"
        torch.testing.assert_close(
            got.detach(), want, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"seed {seed}: {n}: {m}"
        )


def test_the_operator_with_seqused_q_passes_opcheck(generator):
    q, k, v, chunks, left, _ = _problem(generator, batch=3, seqlen=12)
    used = _used_lengths(generator, 3, 12)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(chunk_attention_op, (*leaves, *chunks, left, None, "reference", used))


@pytest.mark.gpu
@pytest.mark.skipif(
    not HOPPER or importlib.util.find_spec("cutlass") is None,
    reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl",
)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_the_cute_operator_with_seqused_q_equals_float64_math(head_dim, generator):
    """bf16 on the CuTe kernels with padded query rows (finite, as the CuTe backward requires):
    used rows against the float64 formula, unused rows exactly 0 (output, dQ) and LSE -inf."""
    seed = generator.initial_seed()
    q, k, v, chunks, left, spec = _problem(
        generator, dtype=torch.bfloat16, device="cuda", batch=4, seqlen=300, heads=4, kv_heads=2, dim=head_dim
    )
    used = _used_lengths(generator, 4, 300, "cuda")
    grad = torch.randn(q.shape, generator=generator, dtype=torch.float64).to("cuda", torch.bfloat16)
    rows, want_out, want_lse, want_grads = _expected_with_used_rows(q, k, v, spec, used, grad, head_dim**-0.5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = chunk_attention_op(*leaves, *chunks, left, None, "cute", used)
    got_grads = torch.autograd.grad(out, leaves, grad)
    unused = ~rows[:, :, 0, 0]
    assert (out[unused] == 0).all() and (got_grads[0][unused] == 0).all(), f"seed {seed}: unused rows"
    assert torch.isneginf(lse.transpose(1, 2)[unused]).all(), f"seed {seed}: unused rows' LSE"
    finite = ~torch.isinf(want_lse)
    torch.testing.assert_close(
        lse[finite], want_lse[finite].float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"seed {seed}: lse: {m}"
    )
    for name, g, w in zip(("out", "dq", "dk", "dv"), (out, *got_grads), (want_out, *want_grads), strict=True):
        assert torch.isfinite(g).all(), f"seed {seed}: {name} has unwritten or non-finite elements"
        error = ((g.double() - w).norm() / w.norm().clamp(min=1e-12)).item()
        assert error < 2e-2, f"seed {seed}: {name} differs from float64 by {error:.2e} (relative norm)"
