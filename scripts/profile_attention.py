"""Where an attention kernel's time goes, beside its peers', from Nsight Compute's counters.

On the GPU machine (ncu reads the hardware counters there; leave the clocks alone):

    ncu --clock-control none --profile-from-start off --set full --import-source no -o /tmp/p \\
        python scripts/profile_attention.py run bwd:cute:128:16384 bwd:fa4-causal:128:16384
    ncu -i /tmp/p.ncu-rep --page raw --csv > raw.csv
    ncu -i /tmp/p.ncu-rep --page source --csv --print-source sass > source.csv
    python scripts/profile_attention.py report raw.csv source.csv

``run`` calls each configuration ``pass:backend:head_dim:seqlen`` (pass ``fwd`` or ``bwd``, a
backend of scripts/bench_attention.py, bf16, ``--tokens`` per batch, ``--width`` = heads x
head_dim, chunk ``--chunk``) a few times, then once inside cudaProfilerStart/Stop, so ncu
profiles exactly that call's kernels, and prints each call's median time outside ncu.
``report`` prints each kernel's duration, tensor-pipe activity and warp instructions; then, for
each kernel with a main loop, that loop per iteration: its instructions by opcode, the warp-state
samples by stall reason and the instructions with the most samples. The loop is found from the
counts: its instructions all execute as often as the most common count of the kernel's MMA
instructions (HGMMA), once per iteration.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RAW_COLUMNS = {  # ncu raw metric: what the kernel table calls it
    "gpu__time_duration.sum": "duration",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": "tensor pipe %",
    "smsp__inst_executed.sum": "warp instructions",
    "launch__registers_per_thread": "registers",
    "launch__shared_mem_per_block_dynamic": "shared memory",
}
MMA_OPCODE = "HGMMA"
SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


@dataclass
class SourceKernel:
    """One kernel of ncu's source page: its SASS lines with their counters."""

    name: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def column(self, row: list[str], name: str) -> float:
        text = row[self.header.index(name)].replace(",", "")
        try:
            return float(text)
        except ValueError:
            return 0.0

    def stall_columns(self) -> list[str]:
        return [c for c in self.header if c.startswith("stall_") and "(Not Issued)" not in c]


def opcode(instruction: str) -> str:
    """The opcode of a SASS line without its predicate and modifiers (``@!P0 LDG.E R2`` -> LDG)."""
    words = instruction.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else ""


def read_raw(path: Path) -> list[dict[str, str]]:
    """ncu's raw page: a header, a row of units, one row per kernel. Values get their units."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or "Kernel Name" not in rows[0]:
        raise SystemExit(f"{path} is not ncu's raw page as CSV (ncu -i REPORT --page raw --csv)")
    header, units = rows[0], rows[1]
    kernels = []
    for row in rows[2:]:
        values = dict(zip(header, row, strict=False))
        for metric in RAW_COLUMNS:
            if metric in values and units[header.index(metric)]:
                values[metric] = f"{values[metric]} {units[header.index(metric)]}"
        kernels.append(values)
    return kernels


def read_source(path: Path) -> list[SourceKernel]:
    """ncu's source page (--page source --csv --print-source sass): per kernel a name line, a
    header and one row per SASS instruction. Kernels listed twice (same name, same SASS) once."""
    kernels: list[SourceKernel] = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                kernels.append(SourceKernel(row[1]))
            elif row[0] == "Address" and kernels:
                kernels[-1].header = row
            elif kernels and kernels[-1].header:
                kernels[-1].rows.append(row)
    unique, seen = [], set()
    for kernel in kernels:
        key = (kernel.name, tuple(r[1] for r in kernel.rows))
        if key not in seen:
            seen.add(key)
            unique.append(kernel)
    return unique


def main_loop(kernel: SourceKernel) -> tuple[float, list[list[str]]]:
    """(iterations, instructions) of the kernel's main loop: the MMA instructions that share an
    execution count are one loop body (or the first tile, or an epilogue), and the loop is the
    group with the most MMA executions; its instructions are every one executed that often.
    (0, []) for a kernel without MMAs."""
    executions = Counter()
    for r in kernel.rows:
        count = kernel.column(r, EXECUTED)
        if opcode(r[1]) == MMA_OPCODE and count:
            executions[count] += count
    if not executions:
        return 0.0, []
    iterations = executions.most_common(1)[0][0]
    return iterations, [r for r in kernel.rows if kernel.column(r, EXECUTED) == iterations]


def short_name(name: str, width: int = 60) -> str:
    """A kernel name without its template arguments, cut to ``width``."""
    return name.split("<")[0].split("(")[0][:width]


def kernel_table(kernels: list[dict[str, str]]) -> str:
    lines = ["| ID | kernel | grid | block | " + " | ".join(RAW_COLUMNS.values()) + " |"]
    lines.append("|" + " --- |" * (4 + len(RAW_COLUMNS)))
    for k in kernels:
        cells = [k.get(metric, "-") for metric in RAW_COLUMNS]
        name = short_name(k["Kernel Name"])
        lines.append(
            f"| {k['ID']} | {name} | {k['Grid Size']} | {k['Block Size']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def loop_report(kernel: SourceKernel, top_opcodes: int, top_sites: int) -> str:
    """The main loop of one kernel, per iteration and per warp: instructions by opcode, samples by
    stall reason, and the instructions with the most samples."""
    iterations, loop = main_loop(kernel)
    if not loop:
        return ""
    stalls = kernel.stall_columns()
    total = sum(kernel.column(r, SAMPLES) for r in kernel.rows)
    in_loop = sum(kernel.column(r, SAMPLES) for r in loop)
    mix = Counter(opcode(r[1]) for r in loop)
    by_reason = Counter()
    for r in loop:
        for s in stalls:
            by_reason[s.removeprefix("stall_")] += kernel.column(r, s)
    lines = [
        f"\n{short_name(kernel.name, 100)}: main loop of {len(loop)} instructions, "
        f"{iterations:,.0f} warp iterations; {in_loop:,.0f} of {total:,.0f} warp-state samples in it",
        "  opcodes per iteration: " + ", ".join(f"{op} {n}" for op, n in mix.most_common(top_opcodes)),
        "  samples by stall reason: "
        + ", ".join(f"{reason} {n:,.0f}" for reason, n in by_reason.most_common() if n > 0),
        "  | address | instruction | samples | main reasons |",
        "  | --- | --- | --- | --- |",
    ]
    for r in sorted(loop, key=lambda r: -kernel.column(r, SAMPLES))[:top_sites]:
        reasons = sorted(((kernel.column(r, s), s.removeprefix("stall_")) for s in stalls), reverse=True)[:2]
        text = " ".join(f"{reason} {n:,.0f}" for n, reason in reasons if n > 0)
        lines.append(f"  | {r[0][-6:]} | {r[1].strip()[:70]} | {kernel.column(r, SAMPLES):,.0f} | {text} |")
    return "\n".join(lines)


def report(raw: Path, source: Path | None, top_opcodes: int = 16, top_sites: int = 12) -> str:
    parts = [kernel_table(read_raw(raw))]
    if source is not None:
        parts += [loop_report(k, top_opcodes, top_sites) for k in read_source(source)]
    return "\n".join(p for p in parts if p)


def run(configs: list[str], chunk: int, tokens: int, width: int) -> None:
    """Each configuration warmed up, timed, then called once inside a profiler range."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_attention

    from s2s.attention import ChunkSpec

    for config in configs:
        try:
            kind, backend, head_dim, seqlen = config.split(":")
            head_dim, seqlen = int(head_dim), int(seqlen)
        except ValueError as error:
            raise SystemExit(
                f"a configuration is pass:backend:head_dim:seqlen (bwd:cute:128:16384), got {config!r}"
            ) from error
        if kind not in ("fwd", "bwd"):
            raise SystemExit(f"the pass of {config!r} must be fwd or bwd")
        generator = torch.Generator(device="cuda").manual_seed(seqlen + head_dim)
        shape = (tokens // seqlen, seqlen, width // head_dim, head_dim)
        q, k, v, grad = (
            torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator) for _ in range(4)
        )
        spec, scale = ChunkSpec(chunk), 1 / math.sqrt(head_dim)
        if kind == "bwd":
            call = bench_attention.backward_runner(backend, q, k, v, spec, scale, grad)
        else:
            call = bench_attention.runner(backend, q, k, v, spec, scale)
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        print(f"{config}: {bench_attention.median_ms(call):.3f} ms (median, outside ncu)", flush=True)
        torch.cuda.profiler.start()
        call()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="call configurations inside profiler ranges (under ncu)")
    run_parser.add_argument(
        "configs", nargs="+", help="pass:backend:head_dim:seqlen, e.g. bwd:cute:128:16384"
    )
    run_parser.add_argument("--chunk", type=int, default=128)
    run_parser.add_argument("--tokens", type=int, default=16384)
    run_parser.add_argument("--width", type=int, default=2048)
    report_parser = commands.add_parser("report", help="tables from ncu's raw and source pages (CSV)")
    report_parser.add_argument("raw", type=Path)
    report_parser.add_argument("source", type=Path, nargs="?")
    report_parser.add_argument("--sites", type=int, default=12, help="instructions listed per main loop")
    args = parser.parse_args(argv)
    if args.command == "run":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("profile_attention.py run needs a CUDA GPU (and ncu around it)")
        run(args.configs, args.chunk, args.tokens, args.width)
    else:
        for path in (args.raw, args.source):
            if path is not None and not path.is_file():
                raise SystemExit(f"{path} does not exist: export it with ncu -i REPORT --page ... --csv")
        print(report(args.raw, args.source, top_sites=args.sites))


if __name__ == "__main__":
    main()
