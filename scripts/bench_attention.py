"""Forward TFLOP/s of chunk-causal attention backends on one GPU.

FLOPs are counted from the exact mask: 4 * head_dim * visible (query, key) pairs per head. The
causal anchors (SDPA flash and cuDNN with is_causal) count their own causal pairs: they show what
a FLOP-matched dense-causal kernel reaches on this GPU. Every backend is checked against the
float32 math of a few rows before it is timed; a wrong backend is reported, not timed.

    python scripts/bench_attention.py                      # the full table (about 2 minutes on an H100)
    python scripts/bench_attention.py --dims 128 --seqlens 16384 --chunks 128
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from s2s.attention import ChunkSpec
from s2s.attention.backends.flex import _compiled_flex_attention, build_block_mask
from s2s.attention.mask import dense_mask, visible_pair_count
from s2s.attention.problem import make_problem

BACKENDS = ("cute", "cute-deterministic", "flex", "sdpa-mask", "sdpa-flash-causal", "cudnn-causal")
# cute-deterministic: the same forward; its backward is the two-kernel deterministic path.


def median_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def attention_call(name: str, q, k, v, spec: ChunkSpec, scale: float) -> Callable[..., torch.Tensor]:
    """One backend as a function of (q, k, v) in (B, S, H, D), its mask built beforehand from the
    shapes; differentiable, so the backward timing goes through it too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from s2s.attention import chunk_attention

    def heads_first(*tensors):
        return (t.transpose(1, 2) for t in tensors)

    if name.startswith("cute"):
        return lambda q, k, v: chunk_attention(q, k, v, spec, backend="cute", softmax_scale=scale)
    if name == "flex":
        block_mask = build_block_mask(spec.resolve(q.shape[0], q.device), q.shape[1], k.shape[1])
        attend = _compiled_flex_attention()
        return lambda q, k, v: attend(*heads_first(q, k, v), block_mask=block_mask, scale=scale).transpose(
            1, 2
        )
    if name == "sdpa-mask":
        problem = make_problem(q, k, v, spec)
        mask = dense_mask(problem.chunks, problem.seqlens_q, problem.seqlens_k).unsqueeze(1)
        return lambda q, k, v: F.scaled_dot_product_attention(
            *heads_first(q, k, v), attn_mask=mask, scale=scale
        ).transpose(1, 2)
    kernel = {"sdpa-flash-causal": SDPBackend.FLASH_ATTENTION, "cudnn-causal": SDPBackend.CUDNN_ATTENTION}[
        name
    ]

    def causal(q, k, v):
        with sdpa_kernel([kernel]):
            return F.scaled_dot_product_attention(
                *heads_first(q, k, v), is_causal=True, scale=scale
            ).transpose(1, 2)

    return causal


def runner(name: str, q, k, v, spec: ChunkSpec, scale: float) -> Callable[[], torch.Tensor]:
    """A zero-argument forward of one backend returning (B, S, H, D). For cute it is the bare
    kernel launch (arguments prepared once), as the other backends time their kernels."""
    if name.startswith("cute"):
        from s2s.attention.cute.launch import prepare

        prepared = prepare(make_problem(q, k, v, spec, softmax_scale=scale))
        out = prepared.out.view(q.shape)

        def cute():
            prepared.launch()
            return out

        return cute
    call = attention_call(name, q, k, v, spec, scale)
    return lambda: call(q, k, v)


def check_rows(
    name: str, launch: Callable[[], torch.Tensor], q, k, v, spec: ChunkSpec, scale: float
) -> float:
    """Relative error of the first batch item's last 64 rows against float32 math (masked backends)."""
    if name.endswith("causal"):
        return float("nan")
    out = launch()
    torch.cuda.synchronize()
    rows = slice(q.shape[1] - 64, q.shape[1])
    problem = make_problem(q[:1], k[:1], v[:1], spec)
    mask = dense_mask(problem.chunks, problem.seqlens_q, problem.seqlens_k)[0, rows]
    scores = torch.einsum("qhd,khd->hqk", q[0, rows].float(), k[0].float()) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    want = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[0].float())
    got = out[0, rows].float()
    return ((got - want).norm() / want.norm()).item()


def backward_runner(name: str, q, k, v, spec: ChunkSpec, scale: float) -> Callable[[], object]:
    """A zero-argument backward pass (dQ, dK, dV) through a graph built once."""
    inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = attention_call(name, q, k, v, spec, scale)(*inputs)
    grad_out = torch.randn_like(out)
    if name == "cute-deterministic":

        def deterministic():
            torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                return torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
            finally:
                torch.use_deterministic_algorithms(False)

        return deterministic
    return lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True)


def bench_shape(
    head_dim: int, seqlen: int, chunk: int, tokens: int, width: int, backends, backward: bool = False
) -> list[dict]:
    batch, heads = tokens // seqlen, width // head_dim
    generator = torch.Generator(device="cuda").manual_seed(seqlen * 1000 + chunk + head_dim)
    q, k, v = (
        torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=generator)
        for _ in range(3)
    )
    spec = ChunkSpec(chunk)
    scale = 1.0 / math.sqrt(head_dim)
    chunks = spec.resolve(batch, "cuda")
    lengths = torch.full((batch,), seqlen, device="cuda")
    flops = 4 * head_dim * visible_pair_count(chunks, lengths, lengths) * heads
    causal_flops = 4 * head_dim * batch * heads * seqlen * (seqlen + 1) // 2
    rows = []
    for name in backends:
        row = {"backend": name, "head_dim": head_dim, "seqlen": seqlen, "chunk": chunk, "batch": batch}
        try:
            launch = runner(name, q, k, v, spec, scale)
            row["rel_error"] = check_rows(name, launch, q, k, v, spec, scale)
            if not math.isnan(row["rel_error"]) and not row["rel_error"] < 2e-2:
                row["error"] = f"wrong result (relative error {row['rel_error']:.2e})"
            else:
                ms = median_ms(launch)
                counted = causal_flops if name.endswith("causal") else flops
                row.update(ms=ms, tflops=counted / ms / 1e9)
                if backward:  # backward FLOPs are 2.5x the forward's (five GEMMs to two)
                    bwd_ms = median_ms(backward_runner(name, q, k, v, spec, scale))
                    row.update(bwd_ms=bwd_ms, bwd_tflops=2.5 * counted / bwd_ms / 1e9)
        except Exception as error:  # one backend failing must not hide the others' numbers
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        rows.append(row)
    del q, k, v
    torch.cuda.empty_cache()
    return rows


def bench_call_latency(backends=("cute", "sdpa", "flex")) -> str:
    """Microseconds per whole ``chunk_attention`` call (checks, mask or table, launch) for the
    small calls of streaming: a chunk of 4 query rows against a cache, base model heads."""
    from s2s.attention import chunk_attention

    lines = ["| batch | Sq | Sk | " + " | ".join(backends) + " |", "|" + " --- |" * (len(backends) + 3)]
    for batch, seqlen_q, seqlen_k in ((1, 4, 400), (8, 4, 1500), (8, 64, 1500)):
        q = torch.randn(batch, seqlen_q, 12, 64, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(batch, seqlen_k, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        spec = ChunkSpec(4, q_offset=seqlen_k - seqlen_q)
        cells = []
        for name in backends:
            try:
                call = functools.partial(chunk_attention, q, k, v, spec, backend=name)
                microseconds = 1000 * median_ms(call)
                cells.append(f"{microseconds:.0f}")
            except Exception as error:
                cells.append(type(error).__name__)
        lines.append(f"| {batch} | {seqlen_q} | {seqlen_k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict], backends, key: str = "tflops") -> str:
    shapes = sorted({(r["head_dim"], r["seqlen"], r["chunk"]) for r in rows})
    header = "| d | S | C | " + " | ".join(backends) + " | cute / flex |"
    lines = [header, "|" + " --- |" * (len(backends) + 4)]
    for shape in shapes:
        by_name = {r["backend"]: r for r in rows if (r["head_dim"], r["seqlen"], r["chunk"]) == shape}
        cells = []
        for name in backends:
            r = by_name.get(name, {})
            cells.append(f"{r[key]:.0f}" if key in r else ("error" if "error" in r else "-"))
        ratio = "-"
        if key in by_name.get("cute", {}) and key in by_name.get("flex", {}):
            ratio = f"{by_name['cute'][key] / by_name['flex'][key]:.2f}x"
        lines.append(f"| {shape[0]} | {shape[1]} | {shape[2]} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per batch (batch = tokens / S)")
    parser.add_argument("--width", type=int, default=2048, help="heads * head_dim")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--json", type=Path, help="also write every row (times, errors) here")
    parser.add_argument("--latency", action="store_true", help="also time small streaming-step calls")
    parser.add_argument("--backward", action="store_true", help="also time the backward pass (dQ, dK, dV)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU")
    # Every shape compiles flex anew (forward, and backward with --backward); past dynamo's default
    # limit of 8 it would silently fall back to eager flex, which materializes the scores.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096

    rows = []
    for head_dim in args.dims:
        for seqlen in args.seqlens:
            for chunk in args.chunks:
                rows += bench_shape(
                    head_dim, seqlen, chunk, args.tokens, args.width, args.backends, args.backward
                )
                for r in rows[-len(args.backends) :]:
                    print(json.dumps(r), flush=True)
    gpu = torch.cuda.get_device_name()
    print(
        f"\nforward TFLOP/s, bf16, {args.tokens} tokens per batch, H*d = {args.width}, {gpu}, "
        f"{datetime.date.today()}, torch {torch.__version__}"
    )
    print(print_table(rows, args.backends))
    if args.backward:
        print(f"\nbackward TFLOP/s (2.5x the forward FLOPs), same shapes, {gpu}, {datetime.date.today()}")
        print(print_table(rows, args.backends, key="bwd_tflops"))
    if args.latency:
        print("\nmicroseconds per chunk_attention call (streaming-step shapes, 12 query / 4 KV heads, d64)")
        print(bench_call_latency())
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
