"""The fused backward's run of fully visible query tiles (``block_info.full_query_tiles``) against
the chunk rule evaluated on every (query, key) pair of each tile (``s2s.attention.mask``)."""

from __future__ import annotations

import random

import pytest
import torch

from s2s.attention.mask import key_is_visible, visible_key_bounds
from s2s.attention.spec import SequenceChunks

pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")

from s2s.attention.cute.block_info import full_query_tiles

TILE_N = 128


def tiles_seeing_all_keys(tile_m, sequence, left_chunks, keys, tiles) -> list[int]:
    """Reference: query tiles of [m_begin, m_end) whose every row sees every key of [key_first,
    key_last], from the rule on each pair (keys past the sequence are never seen)."""
    seqlen_q, seqlen_k, chunk_q, chunk_k, q_offset, k_offset = sequence
    key_first, key_last = keys
    rows = torch.arange(seqlen_q).view(-1, 1)
    cols = torch.arange(key_first, key_last + 1).view(1, -1)
    limit = None if left_chunks < 0 else left_chunks
    visible = key_is_visible(rows, cols, chunk_q, chunk_k, q_offset, k_offset, limit) & (cols < seqlen_k)
    return [
        m
        for m in range(*tiles)
        if m * tile_m < seqlen_q and bool(visible[m * tile_m : min((m + 1) * tile_m, seqlen_q)].all())
    ]


@pytest.mark.parametrize("seed", [random.randrange(10**6) for _ in range(3)])
def test_full_query_tiles_are_the_tiles_seeing_every_key(seed):
    rng = random.Random(seed)
    for case in range(300):
        tile_m = rng.choice([64, 128])
        seqlen_q, seqlen_k = rng.randint(1, 700), rng.randint(1, 700)
        chunk_q = rng.choice([1, 2, 16, 50, 64, 128, 200, 512])
        chunk_k = rng.choice([chunk_q, rng.randint(1, 300)])  # equal rates, or another stream's
        sequence = (seqlen_q, seqlen_k, chunk_q, chunk_k, rng.randint(0, 300), rng.randint(0, 300))
        left_chunks = rng.choice([-1, -1, 0, 1, 3])
        m_total = -(-seqlen_q // tile_m)
        tiles = sorted(rng.sample(range(m_total + 1), 2)) if m_total else [0, 0]
        for key_first in range(0, seqlen_k, TILE_N):
            # The fused kernel's key_last runs past the keys (so a tile crossing them is masked);
            # the deterministic dK/dV kernel's stops at the last key.
            for key_last in (key_first + TILE_N - 1, min(key_first + TILE_N, seqlen_k) - 1):
                keys = (key_first, key_last)
                begin, end = full_query_tiles(tile_m, sequence, left_chunks, keys, tuple(tiles))
                want = tiles_seeing_all_keys(tile_m, sequence, left_chunks, keys, tiles)
                assert tiles[0] <= begin <= end <= tiles[1], (seed, case, begin, end, tiles)
                assert list(range(begin, end)) == want, (
                    f"seed {seed} case {case}: tile_m {tile_m}, sequence {sequence}, left_chunks "
                    f"{left_chunks}, keys {keys}, tiles {tiles}: got [{begin}, {end}), want {want}"
                )


class Int32(int):
    """An int whose arithmetic fails past int32, as the kernels' Int32 values would wrap."""

    def _checked(self, value: int) -> Int32:
        if not -(2**31) <= value < 2**31:
            raise OverflowError(f"int32 overflow: {value}")
        return Int32(value)

    def __neg__(self):
        return self._checked(-int(self))


for _name in ("add", "sub", "mul", "floordiv"):

    def _binary(op):
        return lambda self, other: self._checked(op(int(self), int(other)))

    setattr(Int32, f"__{_name}__", _binary(getattr(int, f"__{_name}__")))
    setattr(Int32, f"__r{_name}__", _binary(getattr(int, f"__r{_name}__")))


def tiles_seeing_all_keys_from_bounds(tile_m, sequence, left_chunks, keys, tiles) -> list[int]:
    """Reference for long sequences: a tile sees every key when its last row's first visible key
    and its first row's past-last key enclose them (int64 bounds of s2s.attention.mask)."""
    seqlen_q, seqlen_k, chunk_q, chunk_k, q_offset, k_offset = sequence
    m = torch.arange(*tiles)
    m = m[m * tile_m < seqlen_q]
    chunks = SequenceChunks(
        *(torch.tensor([v]) for v in (chunk_q, chunk_k, q_offset, k_offset)),
        left_chunks=None if left_chunks < 0 else left_chunks,
    )
    rows = torch.stack([m * tile_m, torch.clamp((m + 1) * tile_m, max=seqlen_q) - 1])  # first, last
    lo, hi = visible_key_bounds(chunks, rows.reshape(1, -1), torch.tensor([seqlen_k]))
    lo_last, hi_first = lo.view(2, -1)[1], hi.view(2, -1)[0]
    return m[(lo_last <= keys[0]) & (hi_first > keys[1])].tolist()


@pytest.mark.parametrize("seed", [random.randrange(10**6) for _ in range(2)])
def test_full_query_tiles_stay_in_int32_at_extreme_chunks_and_offsets(seed):
    """Chunk sizes up to 2^31 - 1, history limits up to 2^31 - 1, positions up to 2^30: every
    intermediate fits in int32 (the kernels' arithmetic) and the run is still the rule's."""
    rng = random.Random(seed)
    for case in range(200):
        tile_m = rng.choice([64, 128])
        seqlen_q, seqlen_k = rng.randint(1, 2**20), rng.randint(1, 2**20)
        big = [1, 3, 128, 2**16, 2**30, 2**31 - 1]
        chunk_q, chunk_k = rng.choice(big), rng.choice(big)
        q_offset, k_offset = rng.randint(0, 2**30 - seqlen_q - 1), rng.randint(0, 2**30 - seqlen_k - 1)
        sequence = (seqlen_q, seqlen_k, chunk_q, chunk_k, q_offset, k_offset)
        left_chunks = rng.choice([-1, 0, 5, 2**20, 2**31 - 1])
        m_total = -(-seqlen_q // tile_m)
        tiles = (0, m_total)
        for key_first in {0, (seqlen_k - 1) // TILE_N * TILE_N, rng.randrange(0, seqlen_k, TILE_N)}:
            for key_last in (key_first + TILE_N - 1, min(key_first + TILE_N, seqlen_k) - 1):
                keys = (key_first, key_last)
                args = (tile_m, tuple(map(Int32, sequence)), Int32(left_chunks), tuple(map(Int32, keys)))
                begin, end = full_query_tiles(*args, tuple(map(Int32, tiles)))
                want = tiles_seeing_all_keys_from_bounds(tile_m, sequence, left_chunks, keys, tiles)
                assert list(range(begin, end)) == want, (
                    f"seed {seed} case {case}: tile_m {tile_m}, sequence {sequence}, left_chunks "
                    f"{left_chunks}, keys {keys}: got [{begin}, {end}), want {len(want)} tiles "
                    f"from {want[:1]} to {want[-1:]}"
                )
