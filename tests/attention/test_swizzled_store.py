"""The swizzled store's plan (``s2s.attention.cute.swizzled_store``) against the
swizzle applied to every element's own address, on CPU: the plan is pure integer math."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("cutlass")

from s2s.attention.cute.swizzled_store import SwizzleBits, plan_stores


def reference_swizzle(address: int, bits: int, base: int, shift: int) -> int:
    """Sw<B, M, S> bit by bit: output bit M + i ^= input bit M + S + i."""
    out = address
    for i in range(bits):
        if (address >> (base + shift + i)) & 1:
            out ^= 1 << (base + i)
    return out


def random_partition(rng: random.Random, element_bytes: int, vector: int) -> tuple[list[int], list[int]]:
    """A thread's destination offsets (elements) as a random strided layout of vectors, and a
    random order of its source registers (vectors kept whole)."""
    modes = [
        (rng.choice([1, 2, 4]), rng.choice([1, 2, 3, 8, 32, 64, 256, 1024, 2048]))
        for _ in range(rng.randint(1, 3))
    ]
    starts = [0]
    for extent, stride in modes:
        starts = [s + i * stride * vector for i in range(extent) for s in starts]
    dst = [s + v for s in starts for v in range(vector)]
    order = list(range(len(starts)))
    rng.shuffle(order)
    src = [order[i // vector] * vector + i % vector for i in range(len(dst))]
    return dst, src


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_matches_swizzle_of_each_address(seed):
    rng = random.Random(seed)
    checked = 0
    for trial in range(400):
        bits, base, shift = rng.choice([(3, 4, 3), (2, 4, 3), (1, 4, 3), (3, 3, 3), (2, 2, 4)])
        swizzle = SwizzleBits(bits, base, shift)
        element_bytes = rng.choice([2, 4, 8])
        vector = rng.choice([1, 2, 4])
        # Vectors stay whole under the swizzle only if they do not cross a 2^base-byte unit.
        if vector * element_bytes > 1 << base:
            continue
        dst, src = random_partition(rng, element_bytes, vector)
        if len(set(dst)) < len(dst):  # the random strides overlap: not a partition of a tile
            continue
        plan = plan_stores(dst, src, element_bytes, swizzle.span_bytes, vector)
        thread_address = rng.randrange(0, 1 << 18, vector * element_bytes)  # any, not span-aligned
        bases = [swizzle.apply(thread_address + low * element_bytes) for low in plan.group_offsets]
        written: dict[int, int] = {}
        for source, group, offset in plan.stores:
            for v in range(vector):
                address = bases[group] + (offset + v) * element_bytes
                assert address not in written, f"seed {seed} trial {trial}: address {address} written twice"
                written[address] = source + v
        expected = {
            reference_swizzle(thread_address + d * element_bytes, bits, base, shift): s
            for d, s in zip(dst, src, strict=True)
        }
        assert written == expected, (
            f"seed {seed} trial {trial}: Sw<{bits},{base},{shift}>, {element_bytes}-byte elements, "
            f"vector {vector}, offsets {dst[:8]}...: the plan's addresses differ from the swizzled ones"
        )
        span = swizzle.span_bytes // element_bytes
        assert len(plan.group_offsets) <= min(span, len(dst) // vector), f"seed {seed} trial {trial}"
        checked += 1
    assert checked > 100, f"seed {seed}: only {checked} random partitions were usable"


def test_dq_staging_plan_needs_four_bases():
    """The backward's dQ slice (64 x 64 fp32, Sw<3,4,3>, thread partition of a 64x64 WGMMA
    accumulator): 16 vectors of 2 from 4 bases, the rest as immediates."""
    dst = [
        v + 256 * h + 8 * j + 2048 * a for a in range(2) for j in range(4) for h in range(2) for v in range(2)
    ]
    src = [
        v + 2 * h + 4 * (j + 4 * a) for a in range(2) for j in range(4) for h in range(2) for v in range(2)
    ]
    plan = plan_stores(dst, src, 4, SwizzleBits(3, 4, 3).span_bytes, 2)
    assert plan.group_offsets == (0, 8, 16, 24)
    assert len(plan.stores) == 16
    assert sorted(offset for _, _, offset in plan.stores) == sorted([0, 256, 2048, 2304] * 4)


def test_split_vector_is_refused():
    with pytest.raises(ValueError, match="not one aligned vector of 2"):
        plan_stores([0, 2, 4, 6], [0, 1, 2, 3], 4, 1024, 2)
    with pytest.raises(ValueError, match="not one aligned vector of 2"):
        plan_stores([1, 2], [0, 1], 4, 1024, 2)
