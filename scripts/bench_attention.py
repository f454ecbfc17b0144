"""Forward (and backward) TFLOP/s of chunk-causal attention backends on one GPU.

FLOPs are counted from the exact mask: 4 * head_dim * visible (query, key) pairs per head; the
backward counts 2.5x the forward. The causal anchors (SDPA flash, cuDNN and FlashAttention-4 with
causal=True) count their own causal pairs: they show what a FLOP-matched dense-causal kernel reaches
on this GPU. Every backend is checked against the float32 math of a few rows before it is timed
(the first sequence's last 64 rows: outputs, and with --backward their dQ), the causal anchors
against causal math; a wrong backend is reported, not timed. While each pass is timed, nvidia-smi
samples the SM clock and power (``s2s.gpu_clocks``; off with --no-clocks): under its power cap an
H100 runs these kernels at 1200-1800 MHz, not 1980, and the clock tables show at what clock each
figure was reached. ``--heat S`` runs each pass for S seconds before timing it, so that no backend
is timed at the higher clock a card has right after an idle spell (compiling, checking).

FlashAttention-4 (``flash_attn.cute``, on the device after ``export S2S_DEVICE_FA4=1; source
.device/setup.sh``) adds two rows when it imports: ``fa4-causal`` and ``fa4-chunk``, the chunk rule
as its ``mask_mod`` with block sparsity (full and partial 128 x 128 blocks from our BlockMask; the
chunk size is a compile-time constant there, so each chunk size compiles its own kernels). A path
it does not support on this GPU reads "n/a" and the reason is printed under the tables.

    python scripts/bench_attention.py                      # the full table (about 2 minutes on an H100)
    python scripts/bench_attention.py --dims 128 --seqlens 16384 --chunks 128
    python scripts/bench_attention.py --backward --chunks 128 --time-budget 170   # stops starting shapes
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from s2s.attention import ChunkSpec
from s2s.attention.backends.flex import _compiled_flex_attention, build_block_mask
from s2s.attention.mask import dense_mask, visible_pair_count
from s2s.attention.problem import make_problem
from s2s.gpu_clocks import ClockSampler, ClockSummary, torch_gpu_uuid

BACKENDS = ("cute", "cute-deterministic", "flex", "sdpa-mask", "sdpa-flash-causal", "cudnn-causal")
# cute-deterministic: the same forward; its backward is the two-kernel deterministic path.
FA4_BACKENDS = ("fa4-causal", "fa4-chunk")  # present when flash_attn.cute imports
FA4_SPARSE_BLOCK = 128  # FA4's sm90 block sparsity wants 128 x 128 blocks (backward tiles divide it)
CHECK_ROWS = 64
CLOCK_PERIOD_MS = 50  # nvidia-smi's sampling period while a pass is timed
FORWARD_TOLERANCE = 2e-2  # relative error of bf16 outputs against float32 math
BACKWARD_TOLERANCE = 5e-2  # dQ accumulates more rounding (dP, dS in bf16)


def median_ms(fn: Callable[[], object], warmup_ms: float = 50) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=300, return_mode="median")


def timed_with_clocks(
    fn: Callable[[], object], gpu_uuid: str | None, heat_seconds: float = 0.0
) -> tuple[float, ClockSummary | None]:
    """``median_ms`` and, with a GPU id, the SM clock and power it ran at (nvidia-smi samples).
    ``heat_seconds`` lengthens the warm-up: the clock falls as the card's power reaches its cap,
    so without it the backend timed first after an idle spell (compiling, checking) runs at a
    higher clock than the ones timed after another backend's load (stop 50: cute at 1980 MHz
    where FlashAttention-4 after it ran at 1665)."""
    warmup_ms = 50 + 1000 * heat_seconds
    if gpu_uuid is None:
        return median_ms(fn, warmup_ms), None
    with ClockSampler(gpu_uuid, period_ms=CLOCK_PERIOD_MS) as sampler:
        ms = median_ms(fn, warmup_ms)
    return ms, sampler.summary


def clock_fields(clocks: ClockSummary | None, prefix: str) -> dict:
    """A row's clock fields: median and lowest SM MHz, median watts, share of samples under a power
    or thermal cap (floats, so scripts/bench_variants.py reads them as measurements, not as the
    row's name; ``--metric bwd_min_mhz`` shows a pass that dipped where the median did not)."""
    if clocks is None:
        return {}
    return {
        f"{prefix}mhz": float(clocks.median_mhz),
        f"{prefix}min_mhz": float(clocks.min_mhz),
        f"{prefix}watts": float(clocks.median_watts),
        f"{prefix}capped": float(clocks.capped),
    }


def fa4_unavailable() -> str | None:
    """Why FlashAttention-4 cannot be benchmarked here, or None when it imports."""
    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
    except Exception as error:
        return f"flash_attn.cute does not import ({describe_error(error)})"
    return None


def fa4_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


def describe_error(error: BaseException, limit: int = 200) -> str:
    """Type, first line and (for a bare assert) where it was raised: enough to say why a row
    failed without a compiler's page-long dump."""
    message = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    if not message and frames:
        text += f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
    return text[:limit]


@dataclass(frozen=True)
class BlockLists:
    """Flex-style block lists (per batch, head and row of blocks: how many, which), int32:
    the partially visible blocks that need the mask and the fully visible ones that do not."""

    mask_count: torch.Tensor  # (B, H, rows)
    mask_index: torch.Tensor  # (B, H, rows, columns)
    full_count: torch.Tensor
    full_index: torch.Tensor


def chunk_block_lists(
    spec: ChunkSpec, batch: int, heads: int, seqlen_q: int, seqlen_k: int, block: int
) -> tuple[BlockLists, BlockLists]:
    """The chunk mask's blocks, for each query block (forward) and for each key block (backward),
    repeated over heads as contiguous tensors (a broadcast head stride would be a different
    compiled kernel in FA4)."""
    mask = build_block_mask(spec.resolve(batch, "cpu"), seqlen_q, seqlen_k, block_size=block)

    def lists(*tensors: torch.Tensor) -> BlockLists:
        expanded = (t.expand(t.shape[0], heads, *t.shape[2:]).contiguous().to(torch.int32) for t in tensors)
        return BlockLists(*expanded)

    forward = lists(mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices)
    backward = lists(mask.q_num_blocks, mask.q_indices, mask.full_q_num_blocks, mask.full_q_indices)
    return forward, backward


def fa4_chunk_mask_mod(chunk: int) -> Callable:
    """FlashAttention-4 ``mask_mod`` of ChunkSpec(chunk): a key is visible when its chunk is not
    after the query's. FA4 hashes captured values into its compile key, so each chunk size is its
    own kernel."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute.utils import scalar_to_ssa

    @cute.jit
    def chunk_causal(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        size = scalar_to_ssa(chunk, cutlass.Int32)
        return kv_idx // size <= q_idx // size

    return chunk_causal


def fa4_call(name: str, q, spec: ChunkSpec, scale: float, seqlen_k: int) -> Callable[..., torch.Tensor]:
    """FlashAttention-4 as a function of (q, k, v) in (B, S, H, D): causal, or the chunk rule."""
    from flash_attn.cute import flash_attn_func

    if name == "fa4-causal":
        return lambda q, k, v: flash_attn_func(q, k, v, softmax_scale=scale, causal=True)[0]
    plain = isinstance(spec.chunk_q, int) and spec.chunk_k is None and spec.left_chunks is None
    if not (plain and spec.q_offset == 0 and spec.k_offset == 0):
        raise NotImplementedError("fa4-chunk takes one int chunk size without offsets or history limit")
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    block = FA4_SPARSE_BLOCK
    forward, backward = chunk_block_lists(spec, q.shape[0], q.shape[2], q.shape[1], seqlen_k, block)

    def sparse(lists: BlockLists) -> BlockSparseTensorsTorch:
        return BlockSparseTensorsTorch(
            mask_block_cnt=lists.mask_count.to(q.device),
            mask_block_idx=lists.mask_index.to(q.device),
            full_block_cnt=lists.full_count.to(q.device),
            full_block_idx=lists.full_index.to(q.device),
            block_size=(block, block),
        )

    forward_blocks, backward_blocks = sparse(forward), sparse(backward)
    mask_mod = fa4_chunk_mask_mod(spec.chunk_q)
    return lambda q, k, v: flash_attn_func(
        q,
        k,
        v,
        softmax_scale=scale,
        mask_mod=mask_mod,
        block_sparse_tensors=forward_blocks,
        block_sparse_tensors_bwd=backward_blocks,
    )[0]


def attention_call(name: str, q, k, v, spec: ChunkSpec, scale: float) -> Callable[..., torch.Tensor]:
    """One backend as a function of (q, k, v) in (B, S, H, D), its mask built beforehand from the
    shapes; differentiable, so the backward timing goes through it too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from s2s.attention import chunk_attention

    def heads_first(*tensors):
        return (t.transpose(1, 2) for t in tensors)

    if name.startswith("cute"):
        return lambda q, k, v: chunk_attention(q, k, v, spec, backend="cute", softmax_scale=scale)
    if name.startswith("fa4"):
        return fa4_call(name, q, spec, scale, k.shape[1])
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


def checked_spec(name: str, spec: ChunkSpec) -> ChunkSpec:
    """The mask a backend computes: its own causal mask for the causal anchors (chunk 1)."""
    return ChunkSpec(1) if name.endswith("causal") else spec


def float32_rows(q, k, v, spec: ChunkSpec, scale: float, grad_out=None):
    """Float32 math of the first sequence's last CHECK_ROWS rows: their output and, given
    ``grad_out``, their dQ (a query row's gradient depends on its own row only)."""
    rows = slice(q.shape[1] - CHECK_ROWS, q.shape[1])
    problem = make_problem(q[:1], k[:1], v[:1], spec)
    mask = dense_mask(problem.chunks, problem.seqlens_q, problem.seqlens_k)[0, rows]
    query = q[0, rows].float().requires_grad_(grad_out is not None)
    with torch.set_grad_enabled(grad_out is not None):
        scores = torch.einsum("qhd,khd->hqk", query, k[0].float()) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[0].float())
    if grad_out is None:
        return out, None
    (dq,) = torch.autograd.grad(out, query, grad_out[0, rows].float())
    return out.detach(), dq


def synchronize(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def check_rows(
    name: str, launch: Callable[[], torch.Tensor], q, k, v, spec: ChunkSpec, scale: float
) -> float:
    """Relative error of the first batch item's last 64 rows against float32 math."""
    out = launch()
    synchronize(q)
    want, _ = float32_rows(q, k, v, checked_spec(name, spec), scale)
    return relative_error(out[0, q.shape[1] - CHECK_ROWS :], want)


def check_backward_rows(name: str, dq: torch.Tensor, q, k, v, grad_out, spec: ChunkSpec, scale) -> float:
    """Relative error of the same rows' dQ against float32 math."""
    synchronize(q)
    _, want = float32_rows(q, k, v, checked_spec(name, spec), scale, grad_out)
    return relative_error(dq[0, q.shape[1] - CHECK_ROWS :], want)


def backward_runner(name: str, q, k, v, spec: ChunkSpec, scale: float, grad_out) -> Callable[[], tuple]:
    """A zero-argument backward pass (dQ, dK, dV) through a graph built once."""
    inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = attention_call(name, q, k, v, spec, scale)(*inputs)
    if name == "cute-deterministic":

        def deterministic():
            torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                return torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
            finally:
                torch.use_deterministic_algorithms(False)

        return deterministic
    return lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True)


def failure(name: str, error: BaseException) -> str:
    """A row's failure: FlashAttention-4 paths this GPU or version lacks read "n/a"."""
    prefix = "n/a" if name.startswith("fa4") else "error"
    return f"{prefix}: {describe_error(error)}"


def bench_shape(
    head_dim: int,
    seqlen: int,
    chunk: int,
    tokens: int,
    width: int,
    backends,
    backward: bool = False,
    device: str = "cuda",
    clocks: bool = True,
    heat_seconds: float = 0.0,
) -> list[dict]:
    """Check, then time, each backend at one shape: one row per backend (errors included)."""
    batch, heads = tokens // seqlen, width // head_dim
    generator = torch.Generator(device=device).manual_seed(seqlen * 1000 + chunk + head_dim)
    q, k, v = (
        torch.randn(batch, seqlen, heads, head_dim, device=device, dtype=torch.bfloat16, generator=generator)
        for _ in range(3)
    )
    grad_out = torch.randn(q.shape, device=device, dtype=torch.bfloat16, generator=generator)
    spec = ChunkSpec(chunk)
    scale = 1.0 / math.sqrt(head_dim)
    chunks = spec.resolve(batch, device)
    lengths = torch.full((batch,), seqlen, device=device)
    flops = 4 * head_dim * visible_pair_count(chunks, lengths, lengths) * heads
    causal_flops = 4 * head_dim * batch * heads * seqlen * (seqlen + 1) // 2
    rows = []
    gpu_uuid = torch_gpu_uuid() if device == "cuda" and clocks else None
    for name in backends:
        row = {"backend": name, "head_dim": head_dim, "seqlen": seqlen, "chunk": chunk, "batch": batch}
        counted = causal_flops if name.endswith("causal") else flops
        try:
            launch = runner(name, q, k, v, spec, scale)
            row["rel_error"] = check_rows(name, launch, q, k, v, spec, scale)
            if not row["rel_error"] < FORWARD_TOLERANCE:
                row["error"] = f"wrong result (relative error {row['rel_error']:.2e})"
            else:
                ms, clock_summary = timed_with_clocks(launch, gpu_uuid, heat_seconds)
                row.update(ms=ms, tflops=counted / ms / 1e9, **clock_fields(clock_summary, ""))
        except Exception as error:  # one backend failing must not hide the others' numbers
            row["error"] = failure(name, error)
        if backward and "error" not in row:
            try:
                run = backward_runner(name, q, k, v, spec, scale, grad_out)
                row["bwd_rel_error"] = check_backward_rows(name, run()[0], q, k, v, grad_out, spec, scale)
                if not row["bwd_rel_error"] < BACKWARD_TOLERANCE:
                    row["bwd_error"] = f"wrong dQ (relative error {row['bwd_rel_error']:.2e})"
                else:  # backward FLOPs are 2.5x the forward's (five GEMMs to two)
                    bwd_ms, clock_summary = timed_with_clocks(run, gpu_uuid, heat_seconds)
                    bwd_tflops = 2.5 * counted / bwd_ms / 1e9
                    row.update(bwd_ms=bwd_ms, bwd_tflops=bwd_tflops, **clock_fields(clock_summary, "bwd_"))
            except Exception as error:
                row["bwd_error"] = failure(name, error)
        rows.append(row)
    del q, k, v, grad_out
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def cuda_context_lost() -> str | None:
    """A kernel fault poisons the whole CUDA context: every later row would fail. Say so."""
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as error:
        return describe_error(error)
    return None


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


def table_cell(row: dict, key: str) -> str:
    if key in row:
        return f"{row[key]:.0f}"
    error = row.get("bwd_error" if key.startswith("bwd_") else "error") or row.get("error")
    if error:
        return "n/a" if error.startswith("n/a") else "error"
    return "-"


def print_table(rows: list[dict], backends, key: str = "tflops") -> str:
    shapes = sorted({(r["head_dim"], r["seqlen"], r["chunk"]) for r in rows})
    header = "| d | S | C | " + " | ".join(backends) + " | cute / flex |"
    lines = [header, "|" + " --- |" * (len(backends) + 4)]
    speed = key.endswith("tflops")  # other keys (clocks) get no ratio column
    for shape in shapes:
        by_name = {r["backend"]: r for r in rows if (r["head_dim"], r["seqlen"], r["chunk"]) == shape}
        cells = [table_cell(by_name.get(name, {}), key) for name in backends]
        ratio = "-"
        if speed and key in by_name.get("cute", {}) and key in by_name.get("flex", {}):
            ratio = f"{by_name['cute'][key] / by_name['flex'][key]:.2f}x"
        lines.append(f"| {shape[0]} | {shape[1]} | {shape[2]} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def failure_notes(rows: list[dict]) -> list[str]:
    """One line per failed pass, for the cells that read "error" or "n/a"."""
    notes = []
    for r in rows:
        where = f"{r['backend']} d={r['head_dim']} S={r['seqlen']} C={r['chunk']}"
        if "error" in r:
            notes.append(f"{where} forward: {r['error']}")
        if "bwd_error" in r:
            notes.append(f"{where} backward: {r['bwd_error']}")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per batch (batch = tokens / S)")
    parser.add_argument("--width", type=int, default=2048, help="heads * head_dim")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS + FA4_BACKENDS,
        help="default: all, FlashAttention-4's where it imports",
    )
    parser.add_argument("--json", type=Path, help="also write every row (times, errors) here")
    parser.add_argument("--latency", action="store_true", help="also time small streaming-step calls")
    parser.add_argument("--backward", action="store_true", help="also time the backward pass (dQ, dK, dV)")
    parser.add_argument(
        "--heat",
        type=float,
        default=0.0,
        help="seconds of each pass run back to back before it is timed, so every backend is timed at "
        "the clock its own power draw settles to (default 0: timed right after its correctness check)",
    )
    parser.add_argument(
        "--no-clocks",
        action="store_true",
        help="do not sample the SM clock and power with nvidia-smi while timing",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        help="seconds after which no new shape starts (the tables of the shapes done still print)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU")
    backends = list(args.backends or BACKENDS + FA4_BACKENDS)
    if any(name in FA4_BACKENDS for name in backends):
        reason = fa4_unavailable()
        if reason:
            backends = [name for name in backends if name not in FA4_BACKENDS]
            print(f"FlashAttention-4 rows left out: {reason}", flush=True)
        else:
            print(f"FlashAttention-4 {fa4_version()}", flush=True)
    # Every shape compiles flex anew (forward, and backward with --backward); past dynamo's default
    # limit of 8 it would silently fall back to eager flex, which materializes the scores.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096

    started = time.monotonic()
    shapes = [(d, s, c) for d in args.dims for s in args.seqlens for c in args.chunks]
    rows = []
    for index, (head_dim, seqlen, chunk) in enumerate(shapes):
        if args.time_budget is not None and time.monotonic() - started > args.time_budget:
            left = ", ".join(f"d{d} S{s} C{c}" for d, s, c in shapes[index:])
            print(f"time budget of {args.time_budget:g} s spent: not run: {left}", flush=True)
            break
        new = bench_shape(
            head_dim,
            seqlen,
            chunk,
            args.tokens,
            args.width,
            backends,
            args.backward,
            clocks=not args.no_clocks,
            heat_seconds=args.heat,
        )
        rows += new
        for r in new:
            print(json.dumps(r), flush=True)
        if lost := cuda_context_lost():
            print(f"CUDA context lost after d{head_dim} S{seqlen} C{chunk} ({lost}); stopping", flush=True)
            break
    gpu = torch.cuda.get_device_name()
    print(
        f"\nforward TFLOP/s, bf16, {args.tokens} tokens per batch, H*d = {args.width}, {gpu}, "
        f"{datetime.date.today()}, torch {torch.__version__}, {time.monotonic() - started:.0f} s"
    )
    print(print_table(rows, backends))
    if args.backward:
        print(f"\nbackward TFLOP/s (2.5x the forward FLOPs), same shapes, {gpu}, {datetime.date.today()}")
        print(print_table(rows, backends, key="bwd_tflops"))
    if any("mhz" in r or "bwd_mhz" in r for r in rows):
        print(
            f"\nSM clock while timed (MHz, median of nvidia-smi samples every {CLOCK_PERIOD_MS} ms; "
            "a power cap lowers it)"
        )
        print(print_table(rows, backends, key="mhz"))
        if args.backward:
            print("\nthe same for the backward")
            print(print_table(rows, backends, key="bwd_mhz"))
    if notes := failure_notes(rows):
        print("\n" + "\n".join(notes))
    if args.latency:
        print("\nmicroseconds per chunk_attention call (streaming-step shapes, 12 query / 4 KV heads, d64)")
        print(bench_call_latency())
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
