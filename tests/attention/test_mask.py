"""Key ranges, tile classes and the flex BlockMask, each checked against the dense mask."""

import pytest
import torch

from s2s.attention import FULL, HIDDEN, PARTIAL, ChunkSpec
from s2s.attention.mask import (
    packed_dense_mask,
    packed_visible_key_bounds,
    padding_is_hidden,
    visible_key_bounds,
    visible_pair_count,
)


def random_spec(g: torch.Generator, batch: int) -> ChunkSpec:
    def pick(low, high):
        return int(torch.randint(low, high, (1,), generator=g))

    per_sequence = pick(0, 2) == 1
    chunk_q = torch.randint(1, 20, (batch,), generator=g, dtype=torch.int32) if per_sequence else pick(1, 20)
    chunk_k = None if pick(0, 2) else pick(1, 20)
    left = None if pick(0, 2) else pick(0, 4)
    q_offset = torch.randint(0, 30, (batch,), generator=g, dtype=torch.int32) if pick(0, 2) else 0
    k_offset = pick(0, 10) if pick(0, 3) == 0 else 0
    return ChunkSpec(chunk_q, chunk_k, left, q_offset, k_offset)


def brute_force_classes(mask: torch.Tensor, sq, sk, tile_q: int, tile_k: int) -> torch.Tensor:
    """Classify by looking at every element of the dense mask."""
    batch = mask.shape[0]
    n_qt, n_kt = -(-mask.shape[1] // tile_q), -(-mask.shape[2] // tile_k)
    classes = torch.zeros(batch, n_qt, n_kt, dtype=torch.int8)
    for b in range(batch):
        for i in range(n_qt):
            for j in range(n_kt):
                block = mask[
                    b, i * tile_q : min((i + 1) * tile_q, sq[b]), j * tile_k : min((j + 1) * tile_k, sk[b])
                ]
                if block.numel() == 0 or not block.any():
                    classes[b, i, j] = HIDDEN
                elif block.all():
                    classes[b, i, j] = FULL
                else:
                    classes[b, i, j] = PARTIAL
    return classes


def test_key_bounds_describe_the_dense_mask(generator):
    for _ in range(40):
        batch = 3
        spec = random_spec(generator, batch)
        sq, sk = 37, 45
        chunks = spec.resolve(batch)
        lo, hi = visible_key_bounds(chunks, torch.arange(sq).view(1, -1), torch.full((batch,), sk))
        keys = torch.arange(sk).view(1, 1, -1)
        from_bounds = (keys >= lo.unsqueeze(-1)) & (keys < hi.unsqueeze(-1))
        assert torch.equal(from_bounds, spec.dense_mask(sq, sk, batch=batch))
        assert (lo <= hi).all()
        # The property kernels rely on: both ends never decrease from one query to the next.
        assert (lo.diff(dim=1) >= 0).all() and (hi.diff(dim=1) >= 0).all()


@pytest.mark.parametrize("tile_q,tile_k", [(4, 4), (8, 16), (16, 8), (128, 128)])
def test_tile_classes_match_brute_force(generator, tile_q, tile_k):
    for _ in range(15):
        batch = 2
        spec = random_spec(generator, batch)
        sq = torch.randint(1, 70, (batch,), generator=generator)
        sk = torch.randint(1, 70, (batch,), generator=generator)
        schedule = spec.tile_schedule(sq, sk, tile_q, tile_k)
        mask = spec.dense_mask(sq, sk)
        assert torch.equal(schedule.classes, brute_force_classes(mask, sq, sk, tile_q, tile_k))


def test_schedule_ranges_reconstruct_the_classes(generator):
    for _ in range(30):
        batch = 3
        spec = random_spec(generator, batch)
        sq = torch.randint(1, 90, (batch,), generator=generator)
        sk = torch.randint(1, 90, (batch,), generator=generator)
        s = spec.tile_schedule(sq, sk, 8, 8)
        tiles = torch.arange(s.classes.shape[-1]).view(1, 1, -1)
        loaded = (tiles >= s.kv_begin.unsqueeze(-1)) & (tiles < s.kv_end.unsqueeze(-1))
        full = (tiles >= s.full_begin.unsqueeze(-1)) & (tiles < s.full_end.unsqueeze(-1))
        rebuilt = torch.where(full, FULL, torch.where(loaded, PARTIAL, HIDDEN)).to(torch.int8)
        assert torch.equal(rebuilt, s.classes)


def test_aligned_chunks_need_no_mask_inside_a_chunk():
    # Chunk 128 = tile: every loaded tile is fully visible, nothing is masked.
    s = ChunkSpec(128).tile_schedule(1024, 1024, 128, 128)
    assert s.count(PARTIAL) == 0
    assert s.count(FULL) == 8 * 9 // 2
    # Chunk 16 < tile: the diagonal tiles are the only partial ones (a staircase inside).
    s = ChunkSpec(16).tile_schedule(1024, 1024, 128, 128)
    assert s.count(PARTIAL) == 8 and s.count(FULL) == 8 * 7 // 2
    # Chunk 512 over 128-tiles: whole 4x4 blocks of full tiles, hidden above them.
    s = ChunkSpec(512).tile_schedule(1024, 1024, 128, 128)
    assert s.count(PARTIAL) == 0 and s.count(FULL) == 16 + 32


def test_visible_pair_count(generator):
    for _ in range(20):
        spec = random_spec(generator, 2)
        sq = torch.randint(0, 50, (2,), generator=generator)
        sk = torch.randint(0, 50, (2,), generator=generator)
        assert visible_pair_count(spec.resolve(2), sq, sk) == int(spec.dense_mask(sq, sk).sum())


def test_packed_bounds_and_mask_agree_with_per_sequence_masks(generator):
    for _ in range(20):
        batch = 4
        spec = random_spec(generator, batch)
        sq = torch.randint(0, 20, (batch,), generator=generator)
        sk = torch.randint(0, 20, (batch,), generator=generator)
        cu_q = torch.nn.functional.pad(sq.cumsum(0), (1, 0)).int()
        cu_k = torch.nn.functional.pad(sk.cumsum(0), (1, 0)).int()
        chunks = spec.resolve(batch)
        packed = packed_dense_mask(chunks, cu_q, cu_k)
        expected = torch.zeros(int(cu_q[-1]), int(cu_k[-1]), dtype=torch.bool)
        per_seq = spec.dense_mask(sq, sk)
        for b in range(batch):
            qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
            expected[qs, ks] = per_seq[b, : sq[b], : sk[b]]
        assert torch.equal(packed, expected)
        lo, hi = packed_visible_key_bounds(chunks, cu_q, cu_k)
        keys = torch.arange(int(cu_k[-1])).view(1, -1)
        assert torch.equal((keys >= lo.view(-1, 1)) & (keys < hi.view(-1, 1)), expected)


def block_classes_of(block_mask, n_q_blocks: int, n_k_blocks: int) -> torch.Tensor:
    """Read a BlockMask's per-block class (hidden / partial / full) back out."""
    classes = torch.zeros(block_mask.kv_num_blocks.shape[0], n_q_blocks, n_k_blocks, dtype=torch.int8)
    for b in range(classes.shape[0]):
        for i in range(n_q_blocks):
            n = int(block_mask.kv_num_blocks[b, 0, i])
            classes[b, i, block_mask.kv_indices[b, 0, i, :n].long()] = PARTIAL
            n = int(block_mask.full_kv_num_blocks[b, 0, i])
            classes[b, i, block_mask.full_kv_indices[b, 0, i, :n].long()] = FULL
    return classes


def test_block_mask_marks_full_blocks_as_full(generator):
    for _ in range(10):
        spec = random_spec(generator, 2)
        bm = spec.block_mask(50, 61, batch=2, block_size=16)
        schedule = spec.tile_schedule(50, 61, 16, 16, batch=2)
        assert torch.equal(block_classes_of(bm, 4, 4), schedule.classes)


def test_packed_block_mask_classes_match_brute_force(generator):
    spec = random_spec(generator, 3)
    sq, sk = torch.tensor([10, 0, 23]), torch.tensor([17, 5, 9])
    cu_q = torch.nn.functional.pad(sq.cumsum(0), (1, 0)).int()
    cu_k = torch.nn.functional.pad(sk.cumsum(0), (1, 0)).int()
    bm = spec.block_mask(33, 31, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, block_size=8)
    dense = packed_dense_mask(spec.resolve(3), cu_q, cu_k).unsqueeze(0)
    expected = brute_force_classes(dense, [33], [31], 8, 8)
    assert torch.equal(block_classes_of(bm, 5, 4), expected)


def test_padding_is_hidden_exactly_when_no_real_query_sees_a_padded_key(generator):
    """padding_is_hidden (host ints) against the dense rule: over frames_k padded keys, some query
    inside its sequence sees a key at or past its sequence's end iff it answers False."""
    start = int(torch.randint(0, 2**31 - 300, (1,), generator=generator))
    answers = set()
    for seed in range(start, start + 300):
        g = torch.Generator().manual_seed(seed)
        batch = int(torch.randint(1, 4, (1,), generator=g))
        spec = random_spec(g, batch)
        frames = int(torch.randint(1, 40, (1,), generator=g))
        chunk = spec.resolve_host(batch).chunk_q
        # aligned lengths half the time (multiples of the chunk), else anything in [0, frames]
        lengths = [
            min(frames, c * int(torch.randint(0, frames // c + 1, (1,), generator=g)))
            if seed % 2
            else int(torch.randint(0, frames + 1, (1,), generator=g))
            for c in chunk
        ]
        full = torch.full((batch,), frames, dtype=torch.int64)
        mask = spec.dense_mask(full, full)  # every pair of the padded batch, by the rule
        sees_padding = any(bool(mask[b, : lengths[b], lengths[b] :].any()) for b in range(batch))
        got = padding_is_hidden(spec.resolve_host(batch), lengths, lengths, frames)
        assert got == (not sees_padding), f"seed {seed}: {spec}, lengths {lengths}, frames {frames}"
        answers.add(got)
    assert answers == {True, False}, f"seeds from {start}: both answers occur"
