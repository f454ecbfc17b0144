"""The fused backward's dQ staging from one carried address (``CarriedSwizzledStore``), checked on
the CPU over the kernel's own geometry: its dQ WGMMA, its staging buffers' swizzled layout and
its accumulator, for every consumer thread and warpgroup and every element. The store's plan
(one swizzled address, the other column groups XORs of it, immediates) must put each register
where the swizzle of that element's own address is; a planted wrong XOR must fail the check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

pytest.importorskip("cutlass")

from s2s.attention.cute.carried_address import CarriedGroups
from s2s.attention.cute.swizzled_store import StorePlan, SwizzleBits

TILINGS = [(64, "wide"), (64, "legacy"), (128, "legacy")]  # where KeyTiles.hoisted_dq_staging is on
ELEMENT_BYTES = 4  # fp32 dQ

# Runs in a child process: CUTE_DSL_ARCH is read when the DSL starts, and the DSL compiles a
# function from its source file. Builds the store as the kernel does (over a span-aligned shared
# pointer at 0) and, apart from it, each element's own offset in the staging buffers.
TRACE = """
import json, sys
import cutlass
import cutlass.cute as cute
from s2s.attention.cute.backward import backward_tiles
from s2s.attention.cute.backward_dkdv_sm90 import dq_slice_mma, dq_staging_layout
from s2s.attention.cute.carried_swizzled_store import CarriedSwizzledStore
from s2s.attention.cute.swizzled_store import SwizzleBits, static_offsets

found = {}
head_dim, tiling = 0, ""


@cute.jit
def trace():
    tiles = backward_tiles(head_dim, "fused", tiling)
    assert tiles.hoisted_dq_staging, (head_dim, tiling)
    mma = dq_slice_mma(cutlass.BFloat16, tiles)
    layout = dq_staging_layout(tiles)
    base = cute.make_ptr(cutlass.Float32, 0, cute.AddressSpace.smem, assumed_align=1024)
    sdQ = cute.make_tensor(cute.recast_ptr(base, layout.inner, dtype=cutlass.Float32), layout.outer)
    acc = mma.get_slice(0).make_fragment_C(mma.get_slice(0).partition_shape_C(tiles.dq_slice))
    identity = cute.make_identity_tensor(tiles.dq_slice)
    warpgroups = []
    for w in cutlass.range_constexpr(tiles.consumer_warpgroups):
        store = CarriedSwizzledStore(mma, 0, sdQ[None, None, w], acc.layout)
        own = []
        for t in cutlass.range_constexpr(mma.size):
            coords = mma.get_slice(t).partition_C(identity)
            offsets = []
            for i in cutlass.range_constexpr(cute.size(coords)):
                row, column = coords[i]
                offsets.append(int(cute.crd2idx((row, column, w), layout.outer)))
            own.append(offsets)
        warpgroups.append({
            "plan": [store.plan.vector, list(store.plan.group_offsets), [list(s) for s in store.plan.stores]],
            "groups": [[list(s) for s in store.groups.sources], list(store.groups.lows)],
            "own": own,
        })
    swizzle = SwizzleBits.of_pointer(sdQ.iterator)
    found[f"d{head_dim}_{tiling}"] = {
        "swizzle": [swizzle.bits, swizzle.base, swizzle.shift],
        "src": static_offsets(acc.layout),
        "warpgroups": warpgroups,
    }


for head_dim, tiling in json.loads(sys.argv[1]):
    cute.compile(trace)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> dict:
    """Per tiling: the swizzle, the registers' order and, per warpgroup, the store's plan and
    carried groups and every thread's elements' own offsets (elements from the buffers' start)."""
    script = tmp_path_factory.mktemp("trace") / "trace_dq_staging.py"
    script.write_text(TRACE)
    env = dict(os.environ, CUTE_DSL_ARCH="sm_90a")  # Hopper's WGMMA, traced on any machine
    command = [sys.executable, str(script), json.dumps(TILINGS)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def parsed(warpgroup: dict) -> tuple[StorePlan, CarriedGroups]:
    vector, group_offsets, stores = warpgroup["plan"]
    sources, lows = warpgroup["groups"]
    plan = StorePlan(vector, tuple(group_offsets), tuple(tuple(s) for s in stores))
    return plan, CarriedGroups(tuple(tuple(s) for s in sources), tuple(lows))


def staged_addresses(
    plan: StorePlan, groups: CarriedGroups, swizzle: SwizzleBits, start: int
) -> dict[int, int]:
    """Register -> byte address as the store writes it for a thread whose partition starts at
    byte ``start`` (unswizzled): the carried addresses swizzled once, each group's address a
    carried one XOR its delta, each element that address plus its immediate."""
    carried = [swizzle.apply(start + low) for low in groups.lows]
    written: dict[int, int] = {}
    for source, group, offset in plan.stores:
        index, delta = groups.sources[group]
        for v in range(plan.vector):
            address = (carried[index] ^ delta) + (offset + v) * ELEMENT_BYTES
            assert source + v not in written
            written[source + v] = address
    return written


def misplaced(traced_tiling: dict, swizzle: SwizzleBits, mutate=None) -> list[str]:
    """Every (warpgroup, thread, element) whose register the store puts anywhere but at the
    swizzle of the element's own address, for buffers at several span-aligned bases."""
    src = traced_tiling["src"]
    errors = []
    for w, warpgroup in enumerate(traced_tiling["warpgroups"]):
        plan, groups = parsed(warpgroup)
        if mutate:
            groups = mutate(groups)
        for thread, own in enumerate(warpgroup["own"]):
            for base in (0, 1024, 37 * 1024):
                start = base + own[0] * ELEMENT_BYTES  # the partition's first element (offset 0)
                written = staged_addresses(plan, groups, swizzle, start)
                for element, offset in enumerate(own):
                    expected = swizzle.apply(base + offset * ELEMENT_BYTES)
                    if written.get(src[element]) != expected:
                        errors.append(f"warpgroup {w} thread {thread} element {element} base {base}")
    return errors


@pytest.mark.parametrize(("head_dim", "tiling"), TILINGS)
def test_every_element_lands_on_its_swizzled_address(traced, head_dim, tiling):
    found = traced[f"d{head_dim}_{tiling}"]
    swizzle = SwizzleBits(*found["swizzle"])
    assert swizzle == SwizzleBits(3, 4, 3)  # the 128-byte swizzle of the fp32 staging buffers
    for warpgroup in found["warpgroups"]:
        plan, groups = parsed(warpgroup)
        # One carried address; the other three 32-byte column groups are XORs of it.
        assert groups.lows == (0,)
        assert groups.sources == ((0, 0), (0, 32), (0, 64), (0, 96))
        assert len(plan.stores) * plan.vector == len(found["src"])
        assert len(warpgroup["own"]) == 128
    assert misplaced(found, swizzle) == []


@pytest.mark.parametrize(
    "mutation",
    [
        lambda g: replace(g, sources=(g.sources[0], (0, 64), g.sources[2], g.sources[3])),  # wrong XOR
        lambda g: replace(g, sources=(g.sources[0], (0, 0), g.sources[2], g.sources[3])),  # XOR dropped
        lambda g: replace(g, lows=(16,)),  # the carried address off by one group's half
    ],
)
def test_planted_mutation_is_caught(traced, mutation):
    found = traced["d64_wide"]
    errors = misplaced(found, SwizzleBits(*found["swizzle"]), mutation)
    # Every thread of both warpgroups has elements the mutation misplaces.
    assert len({e.split(" element")[0] for e in errors}) == 2 * 128
