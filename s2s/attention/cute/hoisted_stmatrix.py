"""stmatrix into a swizzled, double-buffered shared-memory tile from an address carried round the loop.

A thread's stmatrix partition of a pointer-swizzled tile gives one 16-byte destination row per
instruction, and the compiler swizzles each of them every time it is stored to (for the
backward's dS^T: thread, warpgroup and buffer offsets, then shift, mask and XOR, about 25 integer
instructions a query tile). As in ``plan_stores``, a swizzle ``Sw<B, M, S>`` commutes with
adding a multiple of its span, so the rows split into a few groups (offset modulo the span),
each one swizzled address plus immediates, and a buffer stride that is a multiple of the span
moves every group alike. Two more steps keep ptxas from undoing it (``carried_address``):

- loop-invariant addresses are rematerialised every tile from the thread index (the swizzle
  again, measured: 6 instructions saved of ~25), so the current buffer's address is a
  loop-carried value, moved to the other buffer by one add per tile;
- four carried addresses spilled at d64, so only the first group's is carried and the others
  are derived from it with one XOR each, where every thread's offsets prove that exact
  (``xor_deltas``; a group that is not gets an address of its own).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute

from s2s.attention.cute.carried_address import CarriedAddresses, carried_groups
from s2s.attention.cute.swizzled_store import SwizzleBits, plan_stores, static_offsets

STMATRIX_ROW_BYTES = 16  # one thread's destination row of an 8 x 8 matrix of 16-bit elements


class HoistedStmatrixStore(CarriedAddresses):
    """Stores a thread's registers to one of two buffers of ``tile`` (a pointer-swizzled tensor,
    the last mode the buffers) with ``copy``'s stmatrix instructions (a thread's slice of a
    tiled stmatrix copy), each from a carried or XOR-derived address plus an immediate.

    Starts at buffer 0; ``other_buffer`` gives the store to the other one. Carry it round the
    loop (it is a DSL value: its carried addresses are its MLIR values)."""

    def __init__(self, copy: cute.TiledCopy, tile: cute.Tensor):
        element_bytes = tile.element_type.width // 8
        swizzle = SwizzleBits.of_pointer(tile.iterator)
        if tile.shape[-1] != 2:
            raise ValueError(f"{tile.layout}: the last mode must be two buffers, the store alternates them")
        if tile.iterator.alignment % swizzle.span_bytes:
            raise ValueError(
                f"the tile is aligned to {tile.iterator.alignment} bytes, not the swizzle's span"
            )
        rank = cute.rank(tile)
        dst = copy.partition_D(tile)
        first = dst[(None,) * (cute.rank(dst) - 1) + (0,)]
        self.buffer_bytes = int(cute.crd2idx((0,) * (rank - 1) + (1,), tile.layout)) * element_bytes
        if self.buffer_bytes % swizzle.span_bytes:
            raise ValueError(
                f"buffers {self.buffer_bytes} bytes apart do not commute with the swizzle "
                f"(span {swizzle.span_bytes} bytes): store through the partition itself"
            )
        dst_offsets = static_offsets(first.layout)
        # Planned with contiguous registers, as ``copy.retile`` of an accumulator sees them
        # (``__call__`` checks).
        self.plan = plan_stores(
            dst_offsets,
            list(range(len(dst_offsets))),
            element_bytes,
            swizzle.span_bytes,
            STMATRIX_ROW_BYTES // element_bytes,
        )
        # Every thread's first row in the tile (static: the partition of an identity tensor).
        identity = cute.make_identity_tensor(tile.shape)
        thread_offsets = [
            int(cute.crd2idx(copy.get_slice(t).partition_D(identity).iterator, tile.layout)) * element_bytes
            for t in range(cute.size(copy.layout_dst_tv_tiled, mode=[0]))
        ]
        self.groups = carried_groups(
            swizzle, thread_offsets, [low * element_bytes for low in self.plan.group_offsets]
        )
        self.copy = copy
        self.element_type = tile.element_type
        address = cute.recast_ptr(first.iterator, swizzle_=None).toint()
        self.addresses = [swizzle.apply(address + low) for low in self.groups.lows]

    def other_buffer(self, buffer: cutlass.Int32) -> HoistedStmatrixStore:
        """The store to the other buffer, from this one's ``buffer`` (0 or 1)."""
        step = self.buffer_bytes - 2 * self.buffer_bytes * buffer
        return self._with([a + step for a in self.addresses])

    def __call__(self, src: cute.Tensor):
        """``src`` (registers, in the accumulator layout ``copy.retile`` takes) to the current buffer."""
        vector = self.plan.vector
        registers = self.copy.retile(src)
        if static_offsets(registers.layout) != list(range(cute.size(registers))):
            raise ValueError(
                f"the retiled source {registers.layout} is not contiguous: plan with its offsets"
            )
        bases = self.group_pointers(self.element_type, STMATRIX_ROW_BYTES)
        for source, group, elements in self.plan.stores:
            cute.copy(
                self.copy,
                cute.make_tensor(registers.iterator + source, cute.make_layout(vector)),
                cute.make_tensor(bases[group] + elements, cute.make_layout(vector)),
            )
