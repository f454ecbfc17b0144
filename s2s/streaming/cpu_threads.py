"""Torch's CPU thread count for a streaming run, restored afterwards.

A streaming step is many small operations that extra intra-op threads only slow down (a busy
2-core machine: 28 ms per step with one thread, over 1 s with two), so streaming on the CPU sets
its own count without leaving it changed for the caller."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch threads (None: leave the count as it is)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
