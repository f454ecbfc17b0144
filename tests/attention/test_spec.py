"""The rule itself: worked examples written out by hand, and the special cases it must contain."""

import pytest
import torch

from s2s.attention import ChunkSpec
from s2s.attention.mask import key_is_visible


def rows(*lines: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in line] for line in lines])


def test_chunk_4_over_12_positions():
    expected = rows(
        "111100000000",
        "111100000000",
        "111100000000",
        "111100000000",
        "111111110000",
        "111111110000",
        "111111110000",
        "111111110000",
        "111111111111",
        "111111111111",
        "111111111111",
        "111111111111",
    )
    assert torch.equal(ChunkSpec(4).dense_mask(12, 12)[0], expected)


def test_chunk_3_over_7_positions_last_chunk_short():
    expected = rows(
        "1110000",
        "1110000",
        "1110000",
        "1111110",
        "1111110",
        "1111110",
        "1111111",
    )
    assert torch.equal(ChunkSpec(3).dense_mask(7, 7)[0], expected)


def test_left_chunks_1_with_chunk_2():
    expected = rows(
        "11000000",
        "11000000",
        "11110000",
        "11110000",
        "00111100",
        "00111100",
        "00001111",
        "00001111",
    )
    assert torch.equal(ChunkSpec(2, left_chunks=1).dense_mask(8, 8)[0], expected)


def test_left_chunks_0_is_block_diagonal():
    expected = rows("110000", "110000", "001100", "001100", "000011", "000011")
    assert torch.equal(ChunkSpec(2, left_chunks=0).dense_mask(6, 6)[0], expected)


def test_cross_attention_two_encoder_frames_per_decoder_frame():
    # Decoder chunks of 2 frames at 12.5 Hz against encoder chunks of 4 frames at 25 Hz:
    # decoder chunk n sees encoder chunks 0..n.
    expected = rows(
        "111100000000",
        "111100000000",
        "111111110000",
        "111111110000",
        "111111111111",
        "111111111111",
    )
    assert torch.equal(ChunkSpec(2, chunk_k=4).dense_mask(6, 12)[0], expected)


def test_offsets_place_a_chunk_after_its_cache():
    # Three queries at absolute positions 5, 6, 7 with chunk 4 against 8 cached keys.
    expected = rows("11111111", "11111111", "11111111")
    assert torch.equal(ChunkSpec(4, q_offset=5).dense_mask(3, 8)[0], expected)
    # The same queries when the first 4 keys were dropped from the cache (k_offset = 4).
    expected = rows("1111", "1111", "1111")
    assert torch.equal(ChunkSpec(4, q_offset=5, k_offset=4).dense_mask(3, 4)[0], expected)


def test_query_ahead_of_all_keys_under_left_limit_sees_nothing():
    mask = ChunkSpec(2, left_chunks=0, q_offset=6).dense_mask(2, 4)[0]
    assert not mask.any()


@pytest.mark.parametrize("length", [1, 5, 16, 33])
def test_chunk_1_is_causal(length):
    mask = ChunkSpec(1).dense_mask(length, length)[0]
    assert torch.equal(mask, torch.ones(length, length, dtype=torch.bool).tril())


@pytest.mark.parametrize("length,chunk", [(5, 5), (16, 16), (16, 1000), (7, 8)])
def test_chunk_at_least_length_is_full_attention(length, chunk):
    assert ChunkSpec(chunk).dense_mask(length, length).all()


def test_flash_attention_pr_2546_rule_equals_bottom_right_offset(generator):
    for _ in range(50):
        sk = int(torch.randint(1, 40, (1,), generator=generator))
        sq = int(torch.randint(1, sk + 1, (1,), generator=generator))
        c = int(torch.randint(1, 12, (1,), generator=generator))
        q = torch.arange(sq).view(-1, 1)
        k = torch.arange(sk).view(1, -1)
        pr_rule = ((q + sk - sq) // c + 1) * c > k
        ours = ChunkSpec(c, q_offset=sk - sq).dense_mask(sq, sk)[0]
        assert torch.equal(ours, pr_rule), (sq, sk, c)


def test_per_sequence_chunks_equal_separate_specs():
    chunks = torch.tensor([1, 3, 100], dtype=torch.int32)
    offsets = torch.tensor([0, 2, 5], dtype=torch.int32)
    batched = ChunkSpec(chunks, left_chunks=2, q_offset=offsets).dense_mask(9, 14, batch=3)
    for b in range(3):
        single = ChunkSpec(int(chunks[b]), left_chunks=2, q_offset=int(offsets[b])).dense_mask(9, 14)
        assert torch.equal(batched[b], single[0])


def test_key_is_visible_matches_the_written_rule(generator):
    q = torch.randint(0, 200, (500,), generator=generator)
    k = torch.randint(0, 200, (500,), generator=generator)
    cq, ck, left = 3, 5, 2
    expected = [
        (kk // ck) <= (qq // cq) and (kk // ck) >= (qq // cq) - left
        for qq, kk in zip(q.tolist(), k.tolist(), strict=True)
    ]
    got = key_is_visible(q, k, cq, ck, 0, 0, left)
    assert got.tolist() == expected


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"chunk_q": 0}, "chunk_q must be positive"),
        ({"chunk_q": -3}, "chunk_q must be positive"),
        ({"chunk_q": 4, "chunk_k": 0}, "chunk_k must be positive"),
        ({"chunk_q": 4, "left_chunks": -1}, "left_chunks must be non-negative"),
        ({"chunk_q": 4, "q_offset": -1}, "q_offset must be non-negative"),
        ({"chunk_q": 2.5}, "must be an int"),
        ({"chunk_q": torch.tensor([2.0, 4.0])}, "int32 tensor"),
        ({"chunk_q": torch.tensor([[2, 4]], dtype=torch.int32)}, "1-D tensor"),
    ],
)
def test_bad_specs_are_rejected_with_the_reason(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ChunkSpec(**kwargs)


def test_per_sequence_values_are_checked_against_the_batch():
    spec = ChunkSpec(torch.tensor([2, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="positive for every sequence"):
        spec.resolve(2)
    with pytest.raises(ValueError, match="one value per sequence"):
        spec.resolve(3)


def test_a_spec_is_resolved_once_per_batch_and_device(monkeypatch):
    """Every attention layer of a forward resolves the model's one spec: the per-sequence tensors
    are moved and checked (a host read on a GPU) at the first call only, and chunk_k = chunk_q is
    checked once. Bad values are still refused, and another batch size is checked on its own."""
    chunks = torch.tensor([2, 4, 1], dtype=torch.int32)
    offsets = torch.tensor([0, 3, 5], dtype=torch.int32)
    spec = ChunkSpec(chunks, q_offset=offsets, k_offset=offsets)
    reads = []
    original_tolist = torch.Tensor.tolist
    monkeypatch.setattr(
        torch.Tensor, "tolist", lambda self, *a, **k: reads.append(1) or original_tolist(self, *a, **k)
    )
    first = spec.resolve(3)
    assert len(reads) == 2, "chunk_q (= chunk_k) and the offsets tensor are each read once"
    assert spec.resolve(3) is first and spec.resolve(3, "cpu") is first and len(reads) == 2
    host = spec.resolve_host(3)
    assert len(reads) == 2, "the host values come from the same read"
    assert host.chunk_q == host.chunk_k == (2, 4, 1) and host.q_offset == host.k_offset == (0, 3, 5)
    assert first.chunk_k is first.chunk_q and first.q_offset is first.k_offset
    assert original_tolist(first.chunk_q) == [2, 4, 1] and original_tolist(first.k_offset) == [0, 3, 5]
    with pytest.raises(ValueError, match="one value per sequence"):
        spec.resolve(2)
    bad_offset = ChunkSpec(4, q_offset=torch.tensor([0, -1], dtype=torch.int32))
    for _ in range(2):  # a refused resolve is not cached
        with pytest.raises(ValueError, match="q_offset must be non-negative"):
            bad_offset.resolve(2)


def test_a_tensor_shared_by_an_offset_and_a_chunk_is_checked_for_each_rule():
    shared = torch.tensor([0, 2], dtype=torch.int32)  # a fine offset, a bad chunk size
    with pytest.raises(ValueError, match="chunk_k must be positive"):
        ChunkSpec(4, chunk_k=shared, q_offset=shared).resolve(2)


def test_host_values_of_scalar_fields_repeat_per_sequence():
    host = ChunkSpec(3, chunk_k=5, left_chunks=2, q_offset=1).resolve_host(4)
    assert host.chunk_q == (3,) * 4 and host.chunk_k == (5,) * 4
    assert host.q_offset == (1,) * 4 and host.k_offset == (0,) * 4 and host.left_chunks == 2
