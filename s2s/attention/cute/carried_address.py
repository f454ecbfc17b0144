"""Swizzled shared-memory addresses carried round a loop instead of recomputed every iteration.

A swizzled store's addresses depend only on the thread, so they are loop-invariant, and the
compilers undo their hoisting: ptxas rematerialises loop-invariant addresses from the thread
index under register pressure, and before it the compiler recomputes a "hoisted" value from
``%tid.x`` inside the loop (the PTX already does). A value the loop carries (a loop argument)
cannot be recomputed; one it carries unchanged is still folded, unless each iteration passes it
through ``opaque``. And few carried values, not one per group (four spilled at d64): the groups
come from a swizzle's span (``plan_stores``), and where every thread's offsets prove it
(``xor_deltas``) a group's address is one carried address XOR a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import cutlass
import cutlass.cute as cute
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op

from s2s.attention.cute.swizzled_store import SwizzleBits


def xor_deltas(swizzle: SwizzleBits, thread_offsets: list[int], group_offsets: list[int]) -> list[int | None]:
    """Per group (byte offset ``low`` below the span), a ``d`` with ``swizzle(A + low) ==
    swizzle(A + group_offsets[0]) ^ d`` for every thread's byte offset ``a`` (modulo the span)
    and any span-aligned base ``A - a``, or None where no single ``d`` does (0 for the first).

    Past the span the two addresses differ in the base's bits, where XOR is not addition, so
    each ``a + low`` must stay below the span."""
    span = swizzle.span_bytes
    first = group_offsets[0]
    deltas: list[int | None] = [0]
    for low in group_offsets[1:]:
        found = {
            swizzle.apply(a % span + low) ^ swizzle.apply(a % span + first)
            if a % span + max(low, first) < span
            else None
            for a in thread_offsets
        }
        deltas.append(found.pop() if len(found) == 1 else None)
    return deltas


@dataclass(frozen=True)
class CarriedGroups:
    """Which address each store group's comes from: ``sources[g]`` = (index into ``lows``, XOR),
    ``lows`` the byte offsets (below the span) whose swizzled addresses are carried."""

    sources: tuple[tuple[int, int], ...]
    lows: tuple[int, ...]


def carried_groups(swizzle: SwizzleBits, thread_offsets: list[int], group_lows: list[int]) -> CarriedGroups:
    """The first group's address carried and the others XORs of it (``xor_deltas``); a group
    that no single XOR reaches for every thread carries an address of its own."""
    sources: list[tuple[int, int]] = []
    lows: list[int] = []
    for low, delta in zip(group_lows, xor_deltas(swizzle, thread_offsets, group_lows), strict=True):
        if delta is None or not lows:
            sources.append((len(lows), 0))
            lows.append(low)
        else:
            sources.append((0, delta))
    return CarriedGroups(sources=tuple(sources), lows=tuple(lows))


@dsl_user_op
def opaque(value, *, loc=None, ip=None) -> cutlass.Int32:
    """``value`` through an empty side-effecting inline asm with a tied operand: no instruction,
    but the compiler can no longer see that it equals its input, so cannot fold or recompute it."""
    return cutlass.Int32(
        llvm.inline_asm(
            T.i32(),
            [cutlass.Int32(value).ir_value(loc=loc, ip=ip)],
            "",
            "=r,0",
            has_side_effects=True,
            is_align_stack=False,
            asm_dialect=llvm.AsmDialect.AD_ATT,
            loc=loc,
            ip=ip,
        )
    )


class CarriedAddresses:
    """A store's carried swizzled addresses (``addresses``, DSL integers) and how each group's
    address follows from them (``groups``). A DSL value: a loop carries it through its MLIR
    values, one per carried address."""

    addresses: list
    groups: CarriedGroups

    def _with(self, addresses: list):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.addresses = addresses
        return new

    def __extract_mlir_values__(self):
        return [cutlass.Int32(a).ir_value() for a in self.addresses]

    def __new_from_mlir_values__(self, values):
        return self._with([cutlass.Int32(v) for v in values])

    def group_pointers(self, element_type, align: int) -> list:
        """Each group's shared-memory pointer: a carried address, XORed where it is derived."""
        return [
            cute.make_ptr(
                element_type,
                self.addresses[carried] ^ delta if delta else self.addresses[carried],
                cute.AddressSpace.smem,
                assumed_align=align,
            )
            for carried, delta in self.groups.sources
        ]
