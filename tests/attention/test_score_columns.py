"""Which (key, query) each register of the backward's S^T / dP^T accumulator holds, traced on the
CPU for every thread, against the WGMMA accumulator layout of the PTX ISA (m64nNk16, fp32 D:
thread t holds rows 16 (t // 32) + (t % 32) // 4 + 8 i and columns 8 j + 2 (t % 4) + v). The split
order's ``column_pair`` reads a statistic for columns c and c + 1 in one 8-byte load: that needs
the even register column to be an even query and its neighbour the next query."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("cutlass")

THREADS = 128

# Runs in a child process: CUTE_DSL_ARCH is read when the DSL starts (as in test_cute's build
# test), and the DSL compiles a function from its source file.
TRACE = """
import json, sys
import cutlass
import cutlass.cute as cute
from s2s.attention.cute.backward import backward_tiles
from s2s.attention.cute.backward_dkdv_sm90 import transposed_scores_mma
from s2s.attention.cute.fragments import rows_cols

kind, head_dim, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tiles = backward_tiles(head_dim, kind)
found = {}

@cute.jit
def trace():
    mma = transposed_scores_mma(cutlass.BFloat16, tiles)
    for t in cutlass.range_constexpr(threads):
        identity = cute.make_identity_tensor((tiles.keys_per_warpgroup, tiles.tile_m))
        coords = rows_cols(mma.get_slice(t).partition_C(identity))
        rows = [int(coords[r, 0][0]) for r in range(cute.size(coords, mode=[0]))]
        cols = [int(coords[0, c][1]) for c in range(cute.size(coords, mode=[1]))]
        found[t] = (rows, cols)

cute.compile(trace)
print(json.dumps({"keys": tiles.keys_per_warpgroup, "queries": tiles.tile_m, "threads": found}))
"""


def traced_coordinates(kind: str, head_dim: int, folder) -> dict:
    """Per thread of a consumer warpgroup: the keys of its accumulator rows and the queries of
    its columns, in ``rows_cols`` order, as the kernel's ``tScS`` sees them."""
    env = dict(os.environ, CUTE_DSL_ARCH="sm_90a")  # Hopper's WGMMA, traced on any machine
    script = folder / "trace_score_columns.py"
    script.write_text(TRACE)
    command = [sys.executable, str(script), kind, str(head_dim), str(THREADS)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ptx_layout(thread: int, keys: int, queries: int) -> tuple[list[int], list[int]]:
    """The PTX ISA's fp32 accumulator fragment of a 64 x N WGMMA, rows then columns in the order
    rows_cols lists them (rows: i; columns: v fastest, then j)."""
    warp, lane = divmod(thread, 32)
    rows = [16 * warp + lane // 4 + 8 * i for i in range(keys // 64 * 2)]
    cols = [8 * j + 2 * (lane % 4) + v for j in range(queries // 8) for v in range(2)]
    return rows, cols


@pytest.mark.parametrize(("kind", "head_dim"), [("fused", 128), ("fused", 64), ("dkdv", 64)])
def test_accumulator_columns_come_in_adjacent_pairs(kind, head_dim, tmp_path):
    traced = traced_coordinates(kind, head_dim, tmp_path)
    keys, queries, threads = traced["keys"], traced["queries"], traced["threads"]
    assert sorted(int(t) for t in threads) == list(range(THREADS))
    seen = set()
    for name, (rows, cols) in threads.items():
        thread = int(name)
        assert (rows, cols) == ptx_layout(thread, keys, queries), (
            f"{kind} d{head_dim} thread {thread}: accumulator rows {rows[:4]}..., columns {cols[:6]}... "
            f"differ from the PTX fragment layout"
        )
        for c in range(0, len(cols), 2):
            assert cols[c] % 2 == 0 and cols[c + 1] == cols[c] + 1, (
                f"{kind} d{head_dim} thread {thread}: register columns {c}, {c + 1} hold queries "
                f"{cols[c]}, {cols[c + 1]}"
            )
        seen.update((r, q) for r in rows for q in cols)
    # Every (key, query) of the warpgroup's tile is held by exactly one thread's registers.
    assert len(seen) == keys * queries
