"""Time tile-shape variants of the CuTe forward kernel on the GPU, to choose ``default_tiles``.

    python scripts/tune_cute_forward.py --kv-stages 2 3 4 5 6 --chunks 16 128
    python scripts/tune_cute_forward.py --dims 128 --tile-n 128 160 --kv-stages 2 4 --warpgroups 2

Each variant is compiled, checked against float32 math on a few rows and timed (median). One
consumer warpgroup asks for two CTAs an SM (``ForwardTiles.ctas_per_sm``); whether both fit is up
to the shared memory of the shape (at head dim 128, four K/V stages of 128 keys do not).
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch

from s2s.attention import ChunkSpec
from s2s.attention.cute.launch import compile_forward, default_tiles, prepare
from s2s.attention.mask import visible_pair_count
from s2s.attention.problem import make_problem


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--chunks", "--chunk", type=int, nargs="+", default=[128], help="chunk sizes to time")
    parser.add_argument("--kv-stages", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--warpgroups", type=int, nargs="+", default=[1, 2, 3], help="consumer warpgroups")
    parser.add_argument("--tile-n", type=int, nargs="+", default=[128], help="keys per K/V tile")
    args = parser.parse_args()
    print(
        "| d | S | C | warpgroups | CTAs an SM (asked) | tile_n | kv stages | TFLOP/s | rel. error |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    variants = [
        (d, g, n, s) for d in args.dims for g in args.warpgroups for n in args.tile_n for s in args.kv_stages
    ]
    for head_dim, groups, tile_n, stages in variants:
        tiles = dataclasses.replace(
            default_tiles(head_dim), kv_stages=stages, consumer_warpgroups=groups, tile_n=tile_n
        )
        shape = f"{groups} | {tiles.ctas_per_sm} | {tile_n} | {stages}"
        try:
            compiled = compile_forward(torch.bfloat16, tiles)
        except Exception as error:  # e.g. too much shared memory for this shape
            print(f"| {head_dim} | - | - | {shape} | {type(error).__name__} | - |")
            continue
        for seqlen in args.seqlens:
            for chunk in args.chunks:
                print(time_variant(compiled, tiles, head_dim, seqlen, chunk, shape), flush=True)


def time_variant(compiled, tiles, head_dim: int, seqlen: int, chunk: int, shape: str) -> str:
    """One table row: the variant checked against float32 math on a sequence's last rows (the
    check and timing of scripts/bench_attention.py, beside this script), then timed."""
    from bench_attention import check_rows, median_ms

    batch, heads = 16384 // seqlen, 2048 // head_dim
    q, k, v = (
        torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )
    spec = ChunkSpec(chunk)
    problem = make_problem(q, k, v, spec)
    prepared = prepare(problem, compiled=compiled, tiles=tiles)

    def launch() -> torch.Tensor:
        prepared.launch()
        return prepared.out.view(q.shape)

    error = check_rows("cute", launch, q, k, v, spec, 1 / math.sqrt(head_dim))
    ms = median_ms(prepared.launch)
    lengths = torch.full((batch,), seqlen, device="cuda")
    flops = 4 * head_dim * heads * visible_pair_count(problem.chunks, lengths, lengths)
    return f"| {head_dim} | {seqlen} | {chunk} | {shape} | {flops / ms / 1e9:.0f} | {error:.1e} |"


if __name__ == "__main__":
    main()
