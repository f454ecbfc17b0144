"""GQA heads packed into query rows (s2s.attention.pack_gqa): the packed call, with the query side's
chunk and offset scaled by the group, gives every query head of every frame what the unpacked call
gives, under every chunk rule, on padded caches whose unused rows are NaN; checked against the
float64 oracle of tests/attention/test_seqused_k.py on the CPU backends and on the CuTe kernel."""

import importlib.util

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention
from s2s.attention.pack_gqa import gqa_group, pack_queries, packed_chunks, unpack_output
from s2s.attention.spec import SequenceChunks
from tests.attention.test_seqused_k import RULES, Case, assert_close, randint

CPU_BACKENDS = ["reference", "sdpa", "flex"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}
HOPPER = (
    torch.cuda.is_available()
    and torch.cuda.get_device_capability() == (9, 0)
    and importlib.util.find_spec("cutlass") is not None
)


def packed_call(case: Case, backend: str):
    """The case's call with its GQA heads packed into rows (per-sequence rule tensors, as the static
    caches pass them)."""
    batch = len(case.used)
    device = case.q.device

    def per_sequence(value):
        values = value if isinstance(value, list) else [value] * batch
        return torch.tensor(values, dtype=torch.int64, device=device)

    chunks = SequenceChunks(
        chunk_q=per_sequence(case.chunk_q),
        chunk_k=per_sequence(case.chunk_k),
        q_offset=per_sequence(case.q_offset),
        k_offset=per_sequence(case.k_offset),
        left_chunks=case.left_chunks,
    )
    heads_q, heads_k = case.q.shape[2], case.k.shape[2]
    out = chunk_attention(
        pack_queries(case.q, heads_k),
        case.k,
        case.v,
        ChunkSpec.from_resolved(packed_chunks(chunks, gqa_group(heads_q, heads_k))),
        seqused_k=case.seqused_k,
        backend=backend,
    )
    return unpack_output(out, heads_q)


def test_packing_puts_a_key_heads_group_in_rows_and_unpacking_inverts_it(generator):
    q = torch.randn(2, 3, 6, 4, generator=generator)  # 6 query heads on 2 key/value heads: G = 3
    packed = pack_queries(q, 2)
    assert packed.shape == (2, 9, 2, 4)
    for i in range(3):
        for g in range(3):
            for kv in range(2):
                assert torch.equal(packed[:, i * 3 + g, kv], q[:, i, kv * 3 + g]), (i, g, kv)
    assert torch.equal(unpack_output(packed, 6), q)


def test_a_group_must_divide_the_query_heads():
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        pack_queries(torch.zeros(1, 2, 6, 4), 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seqlen_q", [1, 4, 9])
@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_packed_call_matches_the_oracle(rule, seqlen_q, backend, dtype, generator):
    if backend == "flex" and dtype == torch.float64:
        pytest.skip("flex attention on the CPU takes float32 and half types only")
    case = Case(rule, seqlen_q, (6, 2), dtype, generator)
    want, _ = case.oracle()
    got = packed_call(case, backend)
    assert_close(got, want, TOLERANCE[dtype], f"{backend} packed {case}")


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU and nvidia-cutlass-dsl")
@pytest.mark.parametrize("seqlen_q", [1, 4, 16])
@pytest.mark.parametrize("capacity", [200, 300])
def test_cute_kernel_on_packed_decode_rows_matches_the_oracle(capacity, seqlen_q, generator):
    """The static engine's decode call as the kernel sees it: GQA 12:4 packed into rows (3 x the
    frames), chunk 4, head dim 64, bf16, unused rows NaN, used lengths across the tile edges."""
    used = [capacity, 0, 1, 127, 128, 129, capacity - 1, randint(generator, 1, capacity)]
    case = Case(
        RULES[1], seqlen_q, (12, 4), torch.bfloat16, generator, device="cuda", head_dim=64,
        capacity=capacity, used=used,
    )  # fmt: skip
    want, _ = case.oracle()
    got = packed_call(case, "cute")
    assert not torch.isnan(got).any(), f"{int(torch.isnan(got).sum())} output elements NaN: {case}"
    error = ((got.cpu().double() - want).norm() / want.norm()).item()
    assert error <= 1e-2, f"output relative error {error:.2e}: {case}"
    assert (got[1] == 0).all(), f"the stream with no used key: {case}"
