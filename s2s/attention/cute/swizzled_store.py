"""The plan of a store from registers to a swizzled shared-memory tile through a few addresses.

A thread's partition of a swizzled tile (``partition_C`` of a pointer-swizzled tensor) makes the
compiler swizzle every element's address on its own: add the offset, shift, mask, XOR. For the
backward's dQ staging that is 16 addresses, recomputed every query tile (ptxas rematerialises
them rather than hold 16 registers), about 64 integer instructions a tile. But a swizzle
``Sw<B, M, S>`` reads only address bits [M + S, M + S + B): adding a multiple of
``2^(M + S + B)`` bytes (the swizzle's span, 1024 bytes for the 128-byte swizzle) commutes with
it. So the elements split into a few groups by their offset modulo the span; each group needs
one swizzled address and its elements are that address plus a constant (an immediate of the
store instruction). Pure integer math on the partition's static layout; the stores that use it
are ``CarriedSwizzledStore`` and ``HoistedStmatrixStore``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cutlass.cute as cute


@dataclass(frozen=True)
class SwizzleBits:
    """``Sw<B, M, S>`` on byte addresses: bits [M, M + B) ^= bits [M + S, M + S + B)."""

    bits: int
    base: int
    shift: int

    @staticmethod
    def of_pointer(pointer) -> SwizzleBits:
        """The swizzle a shared-memory pointer's type carries (the identity has no bits)."""
        if not pointer.type.is_swizzled:
            raise ValueError(f"{pointer.type} carries no swizzle: store through the tensor itself")
        swizzle = pointer.type.swizzle_type
        return SwizzleBits(bits=swizzle.num_bits, base=swizzle.num_base, shift=swizzle.num_shift)

    @property
    def span_bytes(self) -> int:
        """Adding a multiple of this many bytes leaves the swizzle's input and output bits alone."""
        return 1 << (self.bits + self.base + self.shift)

    def apply(self, address):
        """The swizzled address (works on Python ints and on DSL integers)."""
        mask = ((1 << self.bits) - 1) << self.base
        return address ^ ((address >> self.shift) & mask)


@dataclass(frozen=True)
class StorePlan:
    """Per vector of ``vector`` consecutive elements: its first element's index in the source
    registers, its group (which hoisted base) and its offset in elements from that base."""

    vector: int
    group_offsets: tuple[int, ...]  # each group's offset in elements from the thread's pointer
    stores: tuple[tuple[int, int, int], ...]  # (source index, group, elements past the base)


def plan_stores(
    dst_offsets: list[int], src_offsets: list[int], element_bytes: int, span_bytes: int, vector: int
) -> StorePlan:
    """Group a thread's destination offsets (elements, from its partition's static layout) by
    their remainder modulo the swizzle span. Each vector of ``vector`` elements must be
    contiguous in the destination and the source and start at a multiple of ``vector``."""
    span = span_bytes // element_bytes
    groups: list[int] = []
    stores = []
    if len(dst_offsets) % vector:
        raise ValueError(f"{len(dst_offsets)} elements do not split into vectors of {vector}")
    for i in range(0, len(dst_offsets), vector):
        first = dst_offsets[i]
        contiguous = all(
            dst_offsets[i + v] == first + v and src_offsets[i + v] == src_offsets[i] + v
            for v in range(vector)
        )
        if not contiguous or first % vector or first < 0:
            raise ValueError(
                f"elements {i}..{i + vector - 1} (offsets {dst_offsets[i : i + vector]}) are not one aligned "
                f"vector of {vector}: store them with a smaller vector"
            )
        low = first % span
        if low not in groups:
            groups.append(low)
        stores.append((src_offsets[i], groups.index(low), first - low))
    return StorePlan(vector=vector, group_offsets=tuple(groups), stores=tuple(stores))


def static_offsets(layout: cute.Layout) -> list[int]:
    """Every element's offset under a static layout, in index order."""
    return [int(cute.crd2idx(i, layout)) for i in range(cute.size(layout))]
