"""Load test of `python -m s2s.serve` on localhost: N concurrent websocket clients talking in real time.

For each N in --clients, a server is started (a subprocess, `max_connections=N`, so the batch is
sized as a deployment would size it) and N clients connect, staggered over one chunk, each sending
a speech-like signal (pitch-gliding harmonic bursts between pauses, a different one per client) in
40 ms messages at real-time pace for --seconds, as a microphone would. Per N:

    round trip p50 / p99   from sending the message that completes a chunk to receiving that chunk's
                           reply (the wait for the server's tick, the batched step, both networks);
                           the first second of each client is left out (connection set-up)
    dropped chunks         chunks sent but never answered, plus the chunks' worth of audio the server
                           discarded because a client's backlog overflowed (the server fell behind)
    step p50 / p99         the server's batched step, from its /stats
    real time              p99 round trip <= --budget-ms and no chunk dropped

The clients run in --client-processes processes (each its own event loop), so that N clients' pacing
does not queue behind one Python thread. The model is an artifact (--model DIR), or random weights
at the sizes of configs/model/<--preset>.yaml saved to a temporary artifact (timing does not depend
on the weights; what the model says does not matter here).

    python scripts/bench_serve.py --preset tiny --device cpu --clients 1,2,4 --seconds 8   # CI-sized
    python scripts/bench_serve.py --preset base --device cuda --clients 1,16,64,256 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2s.serve.client import speech_like, talk
from s2s.serve.process import ServerProcess

RATE = 16000


@dataclass
class LoadRow:
    clients: int
    replies: int = 0
    expected: int = 0  # whole chunks the clients sent
    dropped_chunks: int = 0
    round_trip_p50_ms: float | None = None
    round_trip_p99_ms: float | None = None
    step_p50_ms: float | None = None
    step_p99_ms: float | None = None
    refused: int = 0
    error: str | None = None
    real_time: bool = False


def client_batch(url: str, seeds: list[int], seconds: float, chunk_seconds: float, skip_seconds: float):
    """In a worker process: these clients, concurrently; their figures as plain data."""

    async def run():
        async def one(index: int, seed: int):
            await asyncio.sleep((index % 16) * chunk_seconds / 16)  # staggered over one chunk
            return await talk(url, speech_like(seconds, seed), listen_seconds=0.0)

        return await asyncio.gather(*(one(i, s) for i, s in enumerate(seeds)), return_exceptions=True)

    results = []
    for conversation in asyncio.run(run()):
        if isinstance(conversation, BaseException):
            results.append({"error": f"{type(conversation).__name__}: {conversation}"})
            continue
        hello = conversation.hello or {}
        chunk = hello.get("chunk_samples")
        if hello.get("type") != "hello" or not chunk:
            results.append({"refused": 1})
            continue
        skip = int(skip_seconds / (chunk / RATE))
        dropped = conversation.replies[-1].dropped if conversation.replies else 0
        results.append({
            "replies": len(conversation.replies), "expected": conversation.sent_samples // chunk,
            "dropped_samples": dropped, "chunk": chunk, "round_trips": conversation.round_trips_ms[skip:],
        })  # fmt: skip
    return results


def start_server(args, model: str, clients: int) -> ServerProcess:
    server = ServerProcess([
        f"model={model}", "port=0", f"device={args.device}", f"max_connections={clients}",
        f"backlog_seconds={args.backlog_seconds}", *args.server_option,
    ])  # fmt: skip
    try:
        server.wait_ready(args.start_timeout)
    except RuntimeError:
        server.stop()
        raise
    return server


def run_load(args, model: str, clients: int) -> LoadRow:
    row = LoadRow(clients)
    server = start_server(args, model, clients)
    url = server.url
    try:
        chunk_seconds = 0.16
        workers = max(1, min(args.client_processes, clients))
        groups = [list(range(w, clients, workers)) for w in range(workers)]
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            seeds = [[args.seed + i for i in group] for group in groups]
            futures = [pool.submit(client_batch, url, s, args.seconds, chunk_seconds, 1.0) for s in seeds]
            results = [item for future in futures for item in future.result()]
        with urllib.request.urlopen(url + "stats", timeout=10) as response:
            stats = json.load(response)
    finally:
        server.interrupt()
    errors = [r["error"] for r in results if "error" in r]
    row.refused = sum(r.get("refused", 0) for r in results)
    talked = [r for r in results if "replies" in r]
    row.replies = sum(r["replies"] for r in talked)
    row.expected = sum(r["expected"] for r in talked)
    row.dropped_chunks = sum(
        max(0, r["expected"] - r["replies"]) + math.ceil(r["dropped_samples"] / r["chunk"]) for r in talked
    )
    trips = np.asarray([t for r in talked for t in r["round_trips"]], dtype=np.float64)
    if len(trips):
        row.round_trip_p50_ms = float(np.quantile(trips, 0.5))
        row.round_trip_p99_ms = float(np.quantile(trips, 0.99))
    row.step_p50_ms, row.step_p99_ms = stats["step_ms_p50"], stats["step_ms_p99"]
    row.error = "; ".join(errors[:3]) or None
    row.real_time = (
        row.error is None and row.refused == 0 and row.dropped_chunks == 0
        and row.round_trip_p99_ms is not None and row.round_trip_p99_ms <= args.budget_ms
    )  # fmt: skip
    return row


def random_artifact(preset: str, folder: Path, seed: int) -> Path:
    import torch

    from s2s.data.tasks import say_in_german
    from s2s.models import config as presets
    from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
    from s2s.pretrained import save_pretrained

    torch.manual_seed(seed)
    config = TokenDuplexConfig(**dataclasses.asdict(getattr(presets, preset)()))
    model = TokenDuplexModel(config).eval()
    return save_pretrained(model, folder / preset, task=say_in_german().describe())


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(rows: list[LoadRow], budget_ms: float) -> str:
    lines = [
        f"| clients | replies / expected | dropped chunks | round trip p50 | round trip p99 | step p50 | "
        f"step p99 | real time (p99 <= {budget_ms:.0f} ms, none dropped) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        extra = f" ({r.error})" if r.error else (f" ({r.refused} refused)" if r.refused else "")
        lines.append(
            f"| {r.clients} | {r.replies} / {r.expected} | {r.dropped_chunks} | "
            f"{fmt(r.round_trip_p50_ms)} ms | "
            f"{fmt(r.round_trip_p99_ms)} ms | {fmt(r.step_p50_ms)} ms | {fmt(r.step_p99_ms)} ms | "
            f"{'yes' if r.real_time else 'no'}{extra} |"
        )
    return "\n".join(lines)


def parse_args(argv):
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--clients", default="1,2,4", help="comma-separated concurrent client counts")
    parser.add_argument("--seconds", type=float, default=8.0, help="of audio each client sends")
    parser.add_argument("--model", default=None, help="an artifact, checkpoint or run directory")
    parser.add_argument("--preset", default="tiny", help="random weights of configs/model/<preset>.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="the p99 round trip called real time")
    parser.add_argument("--backlog-seconds", type=float, default=1.0)
    parser.add_argument("--client-processes", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--server-option", action="append", default=[], help="key=value passed to s2s.serve")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.clients or min(args.clients) < 1:
        parser.error(f"--clients must list counts >= 1, got {args.clients}")
    return args


def main(argv=None) -> list[LoadRow]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or str(random_artifact(args.preset, Path(folder), args.seed))
        rows = []
        for clients in args.clients:
            try:
                row = run_load(args, model, clients)
            except (RuntimeError, OSError) as error:
                row = LoadRow(clients, error=str(error)[-300:])
            rows.append(row)
            print(f"{clients} clients: {row}", file=sys.stderr, flush=True)
    print(f"# bench_serve {datetime.date.today()} on {platform.node()} ({args.device})")
    print(f"command: python {shlex.join(['scripts/bench_serve.py', *(argv or sys.argv[1:])])}")
    model = args.model or f"random weights, {args.preset}"
    print(f"model: {model}; {args.seconds:.0f} s of audio per client\n")
    print(table(rows, args.budget_ms))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
