"""Registers to a swizzled shared-memory tile from one address carried round the loop.

A thread's partition of a pointer-swizzled tile swizzles every element's address on its own
(for the backward's dQ staging 16 addresses a query tile, ~64 integer instructions). Grouped by
the swizzle's span (``plan_stores``) they are 4 addresses plus immediates, but made before the
loop those 4 were recomputed every tile anyway (stop 47: ~20 instructions). Here one address is
made before the loop and carried round it (``carried_address``), passed through ``opaque`` once
a tile so the compiler does not fold it back into a recomputation from the thread index; the
other groups are XORs of it, where every thread's offset proves that exact (for the dQ slice
under Sw<3,4,3>: XOR 32, 64 and 96 bytes), and each store is an address plus an immediate.
"""

from __future__ import annotations

import cutlass.cute as cute

from s2s.attention.cute.carried_address import CarriedAddresses, carried_groups, opaque
from s2s.attention.cute.swizzled_store import StorePlan, SwizzleBits, plan_stores, static_offsets


def thread_offsets(mma: cute.TiledMma, tile: cute.Tensor) -> list[int]:
    """Every thread's first accumulator element in ``tile``, in elements from the tile's start
    (static: each thread's partition of an identity tensor)."""
    identity = cute.make_identity_tensor(tile.shape)
    return [
        int(cute.crd2idx(mma.get_slice(t).partition_C(identity).iterator, tile.layout))
        for t in range(mma.size)
    ]


class CarriedSwizzledStore(CarriedAddresses):
    """Stores thread ``thread``'s accumulator registers (``src_layout``) of ``mma`` to its
    partition of ``tile``, a pointer-swizzled shared tile aligned to the swizzle's span, through
    ``vector``-element stores from carried addresses (``groups``) plus immediates.

    Carry it round the loop and take ``next_tile()`` once an iteration."""

    plan: StorePlan

    def __init__(
        self, mma: cute.TiledMma, thread, tile: cute.Tensor, src_layout: cute.Layout, vector: int = 2
    ):
        element_bytes = tile.element_type.width // 8
        swizzle = SwizzleBits.of_pointer(tile.iterator)
        if tile.iterator.alignment % swizzle.span_bytes:
            raise ValueError(
                f"the tile is aligned to {tile.iterator.alignment} bytes, not the swizzle's span"
            )
        dst = mma.get_slice(thread).partition_C(tile)
        if dst.iterator.alignment < vector * element_bytes:
            raise ValueError(
                f"the destination pointer is aligned to {dst.iterator.alignment} bytes, less than a "
                f"vector of {vector} x {element_bytes} bytes: pass a smaller vector"
            )
        self.plan = plan_stores(
            static_offsets(dst.layout), static_offsets(src_layout), element_bytes, swizzle.span_bytes, vector
        )
        self.groups = carried_groups(
            swizzle,
            [offset * element_bytes for offset in thread_offsets(mma, tile)],
            [low * element_bytes for low in self.plan.group_offsets],
        )
        self.element_type = tile.element_type
        self.align = vector * element_bytes
        address = cute.recast_ptr(dst.iterator, swizzle_=None).toint()
        self.addresses = [swizzle.apply(address + low) for low in self.groups.lows]

    def next_tile(self) -> CarriedSwizzledStore:
        """The same store for the next iteration, its addresses made opaque to the compiler."""
        return self._with([opaque(a) for a in self.addresses])

    def __call__(self, src: cute.Tensor):
        """``src`` (registers, in ``src_layout``) to the destination."""
        vector = self.plan.vector
        bases = self.group_pointers(self.element_type, self.align)
        for source, group, offset in self.plan.stores:
            cute.autovec_copy(
                cute.make_tensor(src.iterator + source, cute.make_layout(vector)),
                cute.make_tensor(bases[group] + offset, cute.make_layout(vector)),
            )
