"""The host's int32 guard of the kernels' chunk arithmetic (``s2s.attention.cute.chunk_limits``):
a history limit that masks nothing goes to the kernels as unlimited (the reference mask agrees),
calls whose chunk products pass 2^31 are refused with the fix named, and every call it lets
through keeps the kernels' expressions (mirrored here in int32-checked arithmetic) inside int32."""

from __future__ import annotations

import random

import pytest
import torch

from s2s.attention import ChunkSpec
from s2s.attention.mask import key_is_visible
from s2s.attention.problem import make_problem
from s2s.attention.spec import HostChunks

pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")

from s2s.attention.cute import chunk_limits
from s2s.attention.cute.launch import sequence_table
from tests.attention.test_block_info import Int32  # int32-checked arithmetic


def problem_of(spec: ChunkSpec, batch: int, seqlen_q: int, seqlen_k: int):
    q = torch.zeros(batch, seqlen_q, 2, 64, dtype=torch.bfloat16)
    k = torch.zeros(batch, seqlen_k, 2, 64, dtype=torch.bfloat16)
    return make_problem(q, k, k, spec)


@pytest.mark.parametrize("seed", [random.randrange(10**6) for _ in range(2)])
def test_a_limit_that_masks_nothing_is_the_same_mask_as_none(seed):
    rng = random.Random(seed)
    masked_nothing = 0
    for case in range(400):
        batch, seqlen_q, seqlen_k = rng.randint(1, 3), rng.randint(1, 200), rng.randint(1, 200)
        chunk_q = [rng.choice([1, 3, 16, 64, 128, 300]) for _ in range(batch)]
        chunk_k = [rng.choice([c, rng.randint(1, 200)]) for c in chunk_q]
        q_offset = [rng.randint(0, 400) for _ in range(batch)]
        k_offset = [rng.randint(0, 400) for _ in range(batch)]
        left = rng.randint(0, 30)
        chunks = HostChunks(tuple(chunk_q), tuple(chunk_k), tuple(q_offset), tuple(k_offset), left)
        if not chunk_limits.limit_masks_nothing(left, seqlen_q, chunks):
            continue
        masked_nothing += 1
        rows, cols = torch.arange(seqlen_q).view(-1, 1), torch.arange(seqlen_k).view(1, -1)
        for b in range(batch):
            args = (rows, cols, chunk_q[b], chunk_k[b], q_offset[b], k_offset[b])
            assert torch.equal(key_is_visible(*args, left), key_is_visible(*args, None)), (
                f"seed {seed} case {case}: left_chunks {left} changes the mask of sequence {b}: {chunks}"
            )
    assert masked_nothing > 20, f"seed {seed}: too few limits that mask nothing were drawn ({masked_nothing})"


def test_the_kernels_get_unlimited_history_for_a_limit_that_masks_nothing():
    for left, want in ((None, -1), (3, 3), (2**31 - 1, -1), (10**6, -1)):
        problem = problem_of(ChunkSpec(4, left_chunks=left), batch=2, seqlen_q=100, seqlen_k=100)
        assert chunk_limits.kernel_left_chunks(problem) == want, (left, want)
    per_sequence = ChunkSpec(torch.tensor([1, 64], dtype=torch.int32), left_chunks=50)
    # 50 chunks reach back past row 0 for chunks of 64 (2 chunks) but not of 1 (100 chunks)
    assert chunk_limits.kernel_left_chunks(problem_of(per_sequence, 2, 100, 100)) == 50


def test_calls_past_int32_are_refused_with_the_fix_named():
    cases = [  # (spec, Sq, Sk, the product named)
        (ChunkSpec(1, 2**20), 4096, 4096, "(query chunk + 1) x chunk_k"),
        (ChunkSpec(2**30, 1), 64, 4096, "key chunk x chunk_q"),
        (ChunkSpec(4, k_offset=2**31 - 100), 64, 64, "key positions"),
        (ChunkSpec(4, q_offset=2**30), 64, 64, "twice the query positions"),
    ]
    for spec, seqlen_q, seqlen_k, named in cases:
        problem = problem_of(spec, 2, seqlen_q, seqlen_k)
        with pytest.raises(ValueError, match="compute the chunk rule in int32") as error:
            sequence_table(problem)
        assert named in str(error.value) and "backend='flex'" in str(error.value), (spec, str(error.value))
    # the same sizes apart are fine: a huge chunk with a small batch of positions, no history limit
    for spec in (ChunkSpec(2**30), ChunkSpec(8, left_chunks=2**31 - 1), ChunkSpec(128, 64, left_chunks=2)):
        assert sequence_table(problem_of(spec, 2, 4096, 4096)).shape == (2, 8)


def test_a_mixed_batch_is_judged_per_sequence_not_by_its_extremes():
    """Many small chunks in one sequence and huge chunks in another: the extremes together would
    overflow, no single sequence does."""
    chunks = HostChunks((1, 2**20), (1, 2**20), (0, 0), (0, 0), None)
    assert chunk_limits.chunk_arithmetic_overflow(5000, 5000, chunks, -1) is None
    assert chunk_limits.chunk_arithmetic_overflow(
        5000, 5000, HostChunks((1,), (2**20,), (0,), (0,), None), -1
    )


def kernel_expressions(sequence, left_chunks, row, key):
    """The kernels' chunk expressions (mask.key_bounds at a row, block_info.query_tile_run at a
    key tile), written again here in the checked type."""
    _, _, chunk_q, chunk_k, q_offset, k_offset = map(Int32, sequence)
    q_chunk = (Int32(row) + q_offset) // chunk_q
    values = [(q_chunk + 1) * chunk_k - k_offset]
    key_chunk = (Int32(key) + k_offset) // chunk_k
    values.append(key_chunk * chunk_q - q_offset)
    if left_chunks >= 0:
        values.append((q_chunk - Int32(left_chunks)) * chunk_k - k_offset)
        values.append((key_chunk + Int32(left_chunks) + 1) * chunk_q - q_offset)
    return values


@pytest.mark.parametrize("seed", [random.randrange(10**6) for _ in range(2)])
def test_every_call_the_guard_lets_through_stays_in_int32(seed):
    rng = random.Random(seed)
    passed = 0
    for _ in range(3000):
        seqlen_q, seqlen_k = rng.choice([1, 64, 4096, 2**20]), rng.choice([1, 64, 4096, 2**20])
        big = [1, 7, 128, 2**12, 2**20, 2**30, 2**31 - 1]
        chunk_q, chunk_k = rng.choice(big), rng.choice(big)
        q_offset, k_offset = rng.choice([0, 5, 2**20, 2**29]), rng.choice([0, 5, 2**20, 2**29])
        left = rng.choice([-1, 0, 3, 2**10, 2**20, 2**31 - 1])
        chunks = HostChunks((chunk_q,), (chunk_k,), (q_offset,), (k_offset,), None if left < 0 else left)
        if left >= 0 and chunk_limits.limit_masks_nothing(left, seqlen_q, chunks):
            left = -1  # what the kernels get
        if chunk_limits.chunk_arithmetic_overflow(seqlen_q, seqlen_k, chunks, left) is not None:
            continue
        passed += 1
        sequence = (seqlen_q, seqlen_k, chunk_q, chunk_k, q_offset, k_offset)
        for row in (0, seqlen_q - 1, seqlen_q + 127):
            for key in (0, seqlen_k - 1, seqlen_k + 127):
                kernel_expressions(sequence, left, row, key)  # raises OverflowError past int32
    assert passed > 300, f"seed {seed}: only {passed} calls passed the guard"
