"""A/B of code versions by a benchmark script, in interleaved rounds: the figure to trust for a
change of a few percent.

Between processes the same kernel moves by up to 6% on one GPU (clocks, placement), more than many
changes gain. So each variant (a git revision of the ``s2s`` package and ``scripts/``, or a folder
holding them, or ``.`` for the working tree) runs the same benchmark in its own process, round after
round in turn (A B C A B C ...), and the table gives each variant's median per row with its range
and the ratio to the first variant. The benchmark must write its rows as ``{"rows": [...]}`` to the
path after ``--json`` (as scripts/bench_attention.py does); numeric fields are the metrics,
the others name the row. Compiled CuTe kernels are cached by source digest, so variants never
share one.

    python scripts/bench_variants.py --variant HEAD~1 --variant . --rounds 3 -- \\
        scripts/bench_attention.py --backward --dims 128 --seqlens 16384 --chunks 128 --backends cute

Where the repository's history is not at hand (a copy of the working tree on another machine),
export the revisions first and pass folders: ``git archive REV s2s scripts | tar -x -C DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METRIC_SUFFIX = "tflops"  # default metrics: every numeric field whose name ends so


@dataclass(frozen=True)
class Variant:
    """One code version: its label and the folder whose ``s2s`` and ``scripts`` it runs."""

    label: str
    root: Path


def materialize(spec: str, workdir: Path, repo: Path = REPO) -> Variant:
    """``.`` (the working tree), an existing folder, or a git revision exported (``s2s`` and
    ``scripts`` only) into ``workdir``."""
    if spec == ".":
        return Variant(".", repo)
    if Path(spec).is_dir():
        return Variant(spec, Path(spec).resolve())
    check = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise SystemExit(f"variant {spec!r} is neither '.', a folder nor a git revision of {repo}")
    root = workdir / f"variant{len(list(workdir.iterdir()))}"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", spec, "s2s", "scripts"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return Variant(spec, root)


def run_once(
    variant: Variant, script: str, args: list[str], out: Path, timeout: float | None = None
) -> list[dict]:
    """The benchmark's rows from one process of ``variant`` (its ``s2s`` first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(variant.root), env.get("PYTHONPATH")) if p)
    own_script = variant.root / script
    command = [sys.executable, str(own_script if own_script.exists() else script), *args, "--json", str(out)]
    out.unlink(missing_ok=True)  # never read a previous run's rows
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        raise RuntimeError(f"{variant.label}: {' '.join(command)} ran past {timeout:g} s") from expired
    if done.returncode != 0:
        raise RuntimeError(
            f"{variant.label}: {' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    if not out.exists():
        raise RuntimeError(f"{variant.label}: {' '.join(command)} wrote no rows to --json {out}")
    return json.loads(out.read_text())["rows"]


def row_key(row: dict, metric_names: list[str] | None) -> tuple:
    """What names a row: its fields that are not measurements (floats, errors, chosen metrics)."""
    return tuple(
        (k, v)
        for k, v in sorted(row.items())
        if not isinstance(v, float) and not k.endswith("error") and k not in (metric_names or ())
    )


def row_metrics(row: dict, metric_names: list[str] | None) -> dict[str, float]:
    """The row's metrics: the named numeric fields, or every one whose name ends in METRIC_SUFFIX."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and (k in metric_names if metric_names else k.endswith(METRIC_SUFFIX))
    }


def collect(rounds: list[dict[str, list[dict]]], metric_names: list[str] | None) -> dict:
    """{(row key, metric): {variant: [values over rounds]}} from each round's rows per variant."""
    table: dict = {}
    for by_variant in rounds:
        for label, rows in by_variant.items():
            for row in rows:
                for metric, value in sorted(row_metrics(row, metric_names).items()):
                    cell = table.setdefault((row_key(row, metric_names), metric), {})
                    cell.setdefault(label, []).append(value)
    return table


def summary(table: dict, labels: list[str]) -> str:
    """Markdown: per row and metric, each variant's median [min, max] and its ratio to the first."""
    columns = ["row", "metric", *labels, *(f"{b} / {labels[0]}" for b in labels[1:])]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for (key, metric), cell in table.items():
        medians = {label: statistics.median(cell[label]) for label in labels if label in cell}
        values = [
            f"{medians[label]:.1f} [{min(cell[label]):.0f}, {max(cell[label]):.0f}]" if label in cell else "-"
            for label in labels
        ]
        base = medians.get(labels[0])
        ratios = [f"{medians[b] / base:.3f}" if b in medians and base else "-" for b in labels[1:]]
        name = ", ".join(f"{k}={v}" for k, v in key)
        lines.append(f"| {name} | {metric} | " + " | ".join(values + ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", required=True, help="'.', a folder or a git revision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, help="seconds one benchmark process may run")
    parser.add_argument(
        "--metric", action="append", help=f"numeric fields to compare (default: *{METRIC_SUFFIX})"
    )
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]: a script taking --json")
    args = parser.parse_args(argv)
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        parser.error("give the benchmark after '--', e.g. -- scripts/bench_attention.py --dims 128")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="bench_variants_") as tmp:
        workdir = Path(tmp) / "trees"
        workdir.mkdir()
        variants = [materialize(spec, workdir) for spec in args.variant]
        labels = [v.label for v in variants]
        if len(set(labels)) != len(labels):
            parser.error(f"variants must differ, got {labels}")
        rounds = []
        for r in range(args.rounds):
            by_variant = {}
            for v in variants:
                by_variant[v.label] = run_once(v, bench[0], bench[1:], Path(tmp) / "rows.json", args.timeout)
                print(f"round {r + 1}/{args.rounds}: {v.label} done", flush=True)
            rounds.append(by_variant)
    print(f"\n{args.rounds} interleaved rounds of: {' '.join(bench)}")
    print(summary(collect(rounds, args.metric), labels))


if __name__ == "__main__":
    main()
