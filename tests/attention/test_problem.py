"""Bad input to chunk_attention gets an error that names the problem and the fix."""

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention


def qkv(b=2, sq=8, sk=8, hq=4, hk=2, d=16, dtype=torch.float32):
    return (
        torch.randn(b, sq, hq, d, dtype=dtype),
        torch.randn(b, sk, hk, d, dtype=dtype),
        torch.randn(b, sk, hk, d, dtype=dtype),
    )


SPEC = ChunkSpec(4)


def test_rank_mismatch_names_the_layout():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, S, H, D\).*cu_seqlens"):
        chunk_attention(q[0], k, v, SPEC)


def test_k_v_shape_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        chunk_attention(q, k, v[:, :5], SPEC)


def test_head_dim_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="share the head dim"):
        chunk_attention(q[..., :8], k, v, SPEC)


def test_query_heads_must_be_a_multiple_of_key_heads():
    q, k, v = qkv(hq=3, hk=2)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of key/value heads \(2\)"):
        chunk_attention(q, k, v, SPEC)


def test_batch_mismatch():
    q, _, _ = qkv(b=2)
    _, k, v = qkv(b=3)
    with pytest.raises(ValueError, match="share the batch size"):
        chunk_attention(q, k, v, SPEC)


def test_mixed_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="share one dtype"):
        chunk_attention(q, k.half(), v, SPEC)


def test_unsupported_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="use float16, bfloat16, float32 or float64"):
        chunk_attention(q.int(), k.int(), v.int(), SPEC)


def test_mixed_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="must be on one device"):
        chunk_attention(q, k.to("meta"), v, SPEC)


def test_spec_must_be_a_chunk_spec():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="spec must be a ChunkSpec"):
        chunk_attention(q, k, v, 4)


def test_per_sequence_chunk_of_wrong_batch():
    q, k, v = qkv(b=2)
    spec = ChunkSpec(torch.tensor([1, 2, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="has 3 values but the batch has 2"):
        chunk_attention(q, k, v, spec)


def packed(total_q=10, total_k=12):
    return torch.randn(total_q, 4, 16), torch.randn(total_k, 2, 16), torch.randn(total_k, 2, 16)


def test_cu_seqlens_must_be_int32():
    q, k, v = packed()
    cu = torch.tensor([0, 4, 10])
    with pytest.raises(TypeError, match=r"cu_seqlens_q must be int32.*\.int\(\)"):
        chunk_attention(q, k, v, SPEC, cu_seqlens_q=cu, cu_seqlens_k=cu.int())


def test_cu_seqlens_must_be_monotone_and_start_at_zero():
    q, k, v = packed()
    with pytest.raises(ValueError, match="non-decreasing"):
        chunk_attention(
            q,
            k,
            v,
            SPEC,
            cu_seqlens_q=torch.tensor([0, 6, 4], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 6, 12], dtype=torch.int32),
        )
    with pytest.raises(ValueError, match="must start at 0"):
        chunk_attention(
            q,
            k,
            v,
            SPEC,
            cu_seqlens_q=torch.tensor([1, 6, 10], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 6, 12], dtype=torch.int32),
        )


def test_lengths_beyond_the_tensor():
    q, k, v = packed(total_q=10, total_k=12)
    with pytest.raises(ValueError, match="ends at 13 but the packed tensor holds only 12 rows"):
        chunk_attention(
            q,
            k,
            v,
            SPEC,
            cu_seqlens_q=torch.tensor([0, 4, 10], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 6, 13], dtype=torch.int32),
        )


def test_cu_seqlens_need_each_other_and_the_same_batch():
    q, k, v = packed()
    with pytest.raises(ValueError, match="need both cu_seqlens_q and cu_seqlens_k"):
        chunk_attention(q, k, v, SPEC, cu_seqlens_q=torch.tensor([0, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="same number of sequences"):
        chunk_attention(
            q,
            k,
            v,
            SPEC,
            cu_seqlens_q=torch.tensor([0, 10], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 6, 12], dtype=torch.int32),
        )


def test_unknown_backend_lists_the_choices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="choose one of auto, cute, flex, sdpa, reference"):
        chunk_attention(q, k, v, SPEC, backend="triton")


def test_backend_that_cannot_run_names_those_that_can():
    q, k, v = qkv()
    q.requires_grad_()
    with pytest.raises(
        NotImplementedError, match=r"no backward pass on CPU.*Backends that can: sdpa, reference"
    ):
        chunk_attention(q, k, v, SPEC, backend="flex")
    with pytest.raises(NotImplementedError, match=r"log-sum-exp.*Backends that can: flex, reference"):
        chunk_attention(q.detach(), k, v, SPEC, backend="sdpa", return_lse=True)


def test_problem_records_the_lengths_on_the_host_once():
    """Backends read the longest sequence and the rows inside sequences from the problem, not
    from the device (a host sync per read): they match what the tensors say."""
    from s2s.attention.problem import make_problem

    q, k, v = packed(total_q=10, total_k=12)
    lengths_q, lengths_k = torch.randint(0, 4, (3,)), torch.randint(0, 5, (3,))  # sums <= 9, 12
    cu_q = torch.cat([torch.zeros(1), lengths_q.cumsum(0)]).int()
    cu_k = torch.cat([torch.zeros(1), lengths_k.cumsum(0)]).int()
    problem = make_problem(q, k, v, SPEC, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    assert (problem.max_seqlen_q, problem.max_seqlen_k) == (int(lengths_q.max()), int(lengths_k.max()))
    assert (problem.rows_q, problem.rows_k) == (int(lengths_q.sum()), int(lengths_k.sum()))

    q, k, v = qkv(b=3, sq=5, sk=7)
    problem = make_problem(q, k, v, SPEC)
    assert (problem.max_seqlen_q, problem.max_seqlen_k, problem.rows_q, problem.rows_k) == (5, 7, 15, 21)


def test_max_seqlens_go_together_with_packed_inputs_and_without_host_offsets():
    q, k, v = packed(total_q=10, total_k=10)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match="max_seqlen_q and max_seqlen_k go together"):
        chunk_attention(q, k, v, SPEC, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=6)
    with pytest.raises(ValueError, match="bound packed sequences: pass them with cu_seqlens_q"):
        chunk_attention(*qkv(), SPEC, max_seqlen_q=8, max_seqlen_k=8)
    with pytest.raises(ValueError, match=r"either the host offsets .* or the bounds"):
        chunk_attention(
            q, k, v, SPEC, cu_seqlens_q=cu, cu_seqlens_k=cu, cu_seqlens_q_host=[0, 4, 10],
            cu_seqlens_k_host=[0, 4, 10], max_seqlen_q=6, max_seqlen_k=6,
        )  # fmt: skip
    with pytest.raises(ValueError, match="max_seqlen_k must be a non-negative int"):
        chunk_attention(q, k, v, SPEC, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=6, max_seqlen_k=-1)


def test_trusted_offsets_are_never_read_and_give_the_checked_result(generator):
    """With max_seqlen_q / max_seqlen_k the offsets stay on the device (guarded against host
    reads) and the reference's one dense call equals its per-sequence path from host offsets."""
    from s2s.attention.problem import make_problem
    from tests.models.test_packing import NoHostReads

    seed = generator.initial_seed()
    lengths = torch.randint(0, 7, (4,), generator=generator)
    lengths[0] = 6
    total = int(lengths.sum())
    cu = torch.cat([torch.zeros(1), lengths.cumsum(0)]).int()
    q, k, v = (torch.randn(total, h, 16, generator=generator, dtype=torch.float64) for h in (4, 2, 2))
    spec = ChunkSpec(torch.tensor([1, 2, 4, 3], dtype=torch.int32), left_chunks=1)
    guarded = cu.as_subclass(NoHostReads)
    problem = make_problem(q, k, v, spec, guarded, guarded, max_seqlen_q=8, max_seqlen_k=8)
    assert (problem.offsets_q, problem.rows_q, problem.max_seqlen_q) == (None, total, 8), f"seed {seed}"
    trusted = chunk_attention(
        q, k, v, spec, cu_seqlens_q=guarded, cu_seqlens_k=guarded, max_seqlen_q=8, max_seqlen_k=8,
        backend="reference", return_lse=True,
    )  # fmt: skip
    checked = chunk_attention(
        q, k, v, spec, cu_seqlens_q=cu, cu_seqlens_k=cu, backend="reference", return_lse=True
    )
    for got, want in zip(trusted, checked, strict=True):
        torch.testing.assert_close(
            got.as_subclass(torch.Tensor), want, rtol=1e-12, atol=1e-12, msg=lambda m: f"seed {seed}: {m}"
        )


# seqused_q and seqused_k (flash-attention's used lengths of a batched call) share their checks.
USED = ["seqused_q", "seqused_k"]


def used_inputs():
    return torch.randn(2, 4, 4, 16), torch.randn(2, 10, 2, 16), torch.randn(2, 10, 2, 16)


@pytest.mark.parametrize("name", USED)
def test_packed_inputs_refuse_used_lengths(name):
    q, k, v = (t.flatten(0, 1) for t in used_inputs())
    cu_q, cu_k = torch.tensor([0, 4, 8], dtype=torch.int32), torch.tensor([0, 10, 20], dtype=torch.int32)
    side = name[-1]
    with pytest.raises(ValueError, match=rf"{name}.*batched layout.*cu_seqlens_{side}: leave {name} out"):
        chunk_attention(
            q, k, v, SPEC, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **{name: torch.tensor([3, 4]).int()}
        )


@pytest.mark.parametrize("name", USED)
@pytest.mark.parametrize(
    "used",
    [torch.tensor([3, 4]), torch.tensor([3.0, 4.0]), torch.tensor([3, 4], dtype=torch.int16), [3, 4]],
    ids=["int64", "float", "int16", "list"],
)
def test_used_lengths_must_be_int32_tensors(name, used):
    fix = (
        r"must be an int32 tensor, got list"
        if isinstance(used, list)
        else r"must be int32 \(as flash-attention\).*\.int\(\)"
    )
    with pytest.raises(TypeError, match=rf"{name} {fix}"):
        chunk_attention(*used_inputs(), SPEC, **{name: used})


@pytest.mark.parametrize("name", USED)
@pytest.mark.parametrize("shape", [(3,), (2, 1), (), (1,)], ids=str)
def test_used_lengths_are_one_per_sequence(name, shape):
    rows = "query" if name == "seqused_q" else "key"
    with pytest.raises(ValueError, match=rf"{name} must have shape \(B,\) = \(2,\), one used {rows} length"):
        chunk_attention(*used_inputs(), SPEC, **{name: torch.zeros(shape, dtype=torch.int32)})


@pytest.mark.parametrize("name", USED)
def test_used_lengths_must_be_on_the_inputs_device(name):
    used = torch.empty(2, dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but the inputs are on cpu; move it there"):
        chunk_attention(*used_inputs(), SPEC, **{name: used})


@pytest.mark.parametrize(("name", "extent", "capacity"), [("seqused_q", "Sq", 4), ("seqused_k", "Sk", 10)])
@pytest.mark.parametrize("past", [False, True], ids=["negative", "past-capacity"])
def test_the_reference_checks_the_used_lengths(name, extent, capacity, past):
    used = torch.tensor([3, capacity + 1] if past else [-1, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match=rf"{name} must lie in \[0, {extent}\] = \[0, {capacity}\]"):
        chunk_attention(*used_inputs(), SPEC, **{name: used}, backend="reference")
