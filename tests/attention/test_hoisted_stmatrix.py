"""The XOR-derived groups of the carried stores (``s2s.attention.cute.carried_address``)
against the swizzle of every thread's own address, on CPU: pure integer math."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("cutlass")

from s2s.attention.cute.carried_address import xor_deltas
from s2s.attention.cute.hoisted_stmatrix import STMATRIX_ROW_BYTES
from s2s.attention.cute.swizzled_store import SwizzleBits


def test_deltas_reproduce_each_threads_swizzled_address():
    rng = random.Random(0)
    derived = 0
    for trial in range(600):
        swizzle = SwizzleBits(*rng.choice([(3, 4, 3), (2, 4, 3), (1, 4, 3)]))
        span = swizzle.span_bytes
        rows = range(0, span, STMATRIX_ROW_BYTES)
        threads = [rng.choice(rows) + span * rng.randrange(8) for _ in range(rng.randint(1, 64))]
        lows = rng.sample(rows, rng.randint(1, min(4, len(rows))))
        deltas = xor_deltas(swizzle, threads, lows)
        assert deltas[0] == 0, f"trial {trial}"
        for low, delta in zip(lows, deltas, strict=True):
            if delta is None:
                continue
            derived += 1
            for a in threads:
                base = span * rng.randrange(1, 64)  # any span-aligned tile start
                expected = swizzle.apply(base + a + low)
                assert swizzle.apply(base + a + lows[0]) ^ delta == expected, (
                    f"trial {trial}: Sw<{swizzle.bits},{swizzle.base},{swizzle.shift}> thread offset {a} "
                    f"group {low}: XOR {delta} misses the swizzled address"
                )
    assert derived > 300, f"only {derived} groups were derivable"


def test_backward_ds_rows_need_one_carried_address():
    """A thread's stmatrix rows of a 64-key x N-query dS^T tile, queries contiguous (128 bytes a
    key row, Sw<3,4,3>): the thread's key (lane % 16 + 16 * warp) and its first 8 queries (lane
    16-31: queries 8-15); instructions 16 queries (32 bytes) apart, so 4 groups, all XORs of the
    first."""
    threads = [128 * (t % 16 + 16 * (t // 32)) + 16 * ((t // 16) % 2) for t in range(128)]
    assert xor_deltas(SwizzleBits(3, 4, 3), threads, [0, 32, 64, 96]) == [0, 32, 64, 96]


def test_carry_past_the_span_is_not_derived():
    """Thread rows in the span's last 16 bytes: a group 32 bytes on leaves the span."""
    assert xor_deltas(SwizzleBits(3, 4, 3), [1008, 0], [0, 32]) == [0, None]
