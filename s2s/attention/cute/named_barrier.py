"""Named barrier ids of the kernels, in one place so no two uses collide.

Hopper has 16 hardware barriers per CTA; id 0 is the one ``cute.arch.sync_threads()`` uses. A
named barrier synchronizes a subset of the CTA's threads (a warpgroup, the consumer warpgroups,
a warpgroup and the dQ warp): every participant must name the same id and thread count.
"""

from __future__ import annotations

import enum

import cutlass
import cutlass.cute as cute

WARPGROUP_THREADS = 128


class NamedBarrier(enum.IntEnum):
    """Ids; those ending in ``_WG`` are the first of one id per consumer warpgroup."""

    CTA = 0  # reserved: cute.arch.sync_threads()
    WARPGROUP_WG = 1  # 1..3: one consumer warpgroup's 128 threads (epilogue staging, statistics, zeroing V)
    CONSUMERS = 4  # the backward's two consumer warpgroups together
    DQ_FULL_WG = 5  # 5..6: a warpgroup's dQ slice is staged (its 128 threads + the dQ warp)
    DQ_EMPTY_WG = 7  # 7..8: the dQ warp has sent the slice off; the staging buffer is free


assert NamedBarrier.DQ_EMPTY_WG + 2 <= 16, "Hopper has 16 named barriers per CTA"


def sync_warpgroup(wg: cutlass.Int32) -> None:
    """Wait for the 128 threads of consumer warpgroup ``wg`` (0-based)."""
    cute.arch.barrier(barrier_id=NamedBarrier.WARPGROUP_WG + wg, number_of_threads=WARPGROUP_THREADS)


def sync_consumers(warpgroups: int) -> None:
    """Wait for every thread of the consumer warpgroups."""
    cute.arch.barrier(barrier_id=NamedBarrier.CONSUMERS, number_of_threads=WARPGROUP_THREADS * warpgroups)


class DqHandshake:
    """The fused backward's dQ staging, per consumer warpgroup: the warpgroup waits on
    ``DQ_EMPTY_WG`` until its buffer is free, stages its slice and arrives on ``DQ_FULL_WG``;
    the dQ warp waits on full, sends the slice off and arrives on empty."""

    threads = WARPGROUP_THREADS + 32  # a warpgroup and the dQ warp

    @staticmethod
    def wait(barrier: NamedBarrier, wg) -> None:
        cute.arch.barrier(barrier_id=barrier + wg, number_of_threads=DqHandshake.threads)

    @staticmethod
    def arrive(barrier: NamedBarrier, wg) -> None:
        cute.arch.barrier_arrive(barrier_id=barrier + wg, number_of_threads=DqHandshake.threads)
