"""scripts/bench_streaming.py on the CPU: the smoke run's table holds one row per configuration with
finite latencies over the whole asked history, its --json rows say the same; --max-seconds stops a
run and says where; an out-of-memory configuration is reported and the bench goes on; the session
gets the engine keywords once it takes them (a stand-in session that takes them here)."""

import json
import math
from typing import ClassVar

import pytest
import torch

from s2s.streaming.token_session import TokenStreamingSession

SMOKE = "--streams 1,2 --frames 24 --left-chunks none,2 --model tiny --dtype float32 --device cpu"


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_streaming")


def table_rows(out: str) -> list[list[str]]:
    """The cells of the streaming table's body rows (the markdown lines after its header)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| engine | streams | left_chunks |"))
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        body.append([cell.strip() for cell in line.strip("|").split("|")])
    return body


def engines_expected(bench) -> list[str]:
    return ["static", "packed"] if bench.accepts(TokenStreamingSession, "engine") else ["packed"]


def test_percentile_interpolates_between_ranks(bench):
    values = [4.0, 1.0, 3.0, 2.0]
    assert bench.percentile(values, 0) == 1.0 and bench.percentile(values, 100) == 4.0
    assert bench.percentile(values, 50) == 2.5
    assert bench.percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert bench.percentile([7.0], 99) == 7.0


def test_the_window_is_centred_on_the_frame_or_moved_inside(bench):
    ends = [4 * (i + 1) for i in range(3, 30)]  # timed steps after 3 of warm-up, chunk 4
    times = [float(e) for e in ends]  # a step's time is its end frame: the median is the middle's
    assert bench.window_near(ends, times, 50) == (48, 48.0)  # steps ending 40 .. 56
    assert bench.window_near(ends, times, 0) == (24, 24.0)  # the first five: 16 .. 32
    assert bench.window_near(ends, times, 10_000) == (112, 112.0)  # the last five
    assert bench.window_near([8, 12], [1.0, 3.0], 50) == (12, 2.0)  # fewer steps than a window


def test_accepts_follows_kwargs_to_the_base_class(bench):
    class Base:
        def __init__(self, a, engine="packed"):
            pass

    class Passes(Base):
        def __init__(self, a, **kwargs):
            super().__init__(a, **kwargs)

    class Closed(Base):
        def __init__(self, a):
            super().__init__(a)

    assert bench.accepts(Base, "engine") and bench.accepts(Passes, "engine")
    assert not bench.accepts(Closed, "engine") and not bench.accepts(Passes, "cuda_graph")


@pytest.mark.slow
def test_cpu_smoke_run_reports_every_configuration(bench, tmp_path, capsys):
    path = tmp_path / "rows.json"
    argv = [*SMOKE.split(), "--warmup", "2", "--vocoder-steps", "3", "--json", str(path)]
    report = bench.main(argv)
    out = capsys.readouterr().out

    engines = engines_expected(bench)
    configurations = [(e, s, left) for s in (1, 2) for left in (None, 2) for e in engines]
    rows = report["rows"]
    assert [(r["engine"], r["streams"], r["left_chunks"]) for r in rows] == configurations
    for r in rows:
        assert r["error"] is None and not r["stopped"]
        assert r["frames"] == r["frames_reached"] == r["late_frame"] == 24  # the whole history was fed
        assert r["timed_steps"] == 24 // 4 - 2
        latencies = [r["p50_ms"], r["p99_ms"], r["early_ms"], r["late_ms"]]
        assert all(math.isfinite(x) and x > 0 for x in latencies)
        assert r["p50_ms"] <= r["p99_ms"]
        assert r["ratio"] == pytest.approx(r["late_ms"] / r["early_ms"])
        assert r["real_time"] == (r["p99_ms"] < 160.0)
        assert r["early_frame"] == 20  # frame 50 is past the history: the middle of its 4 timed steps
        assert r["peak_memory_gib"] is None  # no GPU memory on the CPU

    body = table_rows(out)
    assert len(body) == len(configurations)
    for cells, r in zip(body, rows, strict=True):
        left = "none" if r["left_chunks"] is None else str(r["left_chunks"])
        assert cells[:3] == [r["engine"], str(r["streams"]), left]
        assert cells[3:5] == [f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
        assert cells[5] == ("yes" if r["real_time"] else "no") and cells[6] == "n/a"
        assert cells[7] == f"{r['early_ms']:.2f} (frame 20)"
        assert cells[8] == f"{r['late_ms']:.2f} (frame 24)"
        assert cells[9] == f"{r['ratio']:.2f}x"

    assert json.loads(path.read_text()) == report
    assert report["command"] == "python scripts/bench_streaming.py " + " ".join(argv)
    assert report["command"] in out and f"torch {torch.__version__}" in out and " UTC" in out
    assert report["device"].startswith("CPU") and report["device"] in out
    assert [v["streams"] for v in report["vocoder"]] == [1, 2]
    # on the CPU `auto` runs both engines' decode calls on SDPA
    assert report["decode_backends"] == {"static": "sdpa", "packed": "sdpa"}
    assert "decode attention (model backend auto): static and graph on sdpa, packed on sdpa" in out
    for v in report["vocoder"]:
        assert v["error"] is None and v["p50_ms"] > 0
        assert v["per_stream_ms"] == pytest.approx(v["p50_ms"] / v["streams"])
    assert "vocoder (GriffinLimVocoder.stream" in out and "2 streams" in out


@pytest.mark.slow
def test_max_seconds_stops_a_run_and_says_where(bench, capsys):
    argv = "--streams 1 --frames 40 --left-chunks 2 --model tiny --device cpu --warmup 1 --no-vocoder"
    report = bench.main([*argv.split(), "--max-seconds", "0"])
    rows = report["rows"]
    assert len(rows) == len(engines_expected(bench))
    for row in rows:  # the budget is spent at once: each run stops after its first step past the warm-up
        assert row["stopped"] and row["frames_reached"] == row["late_frame"] == 8
        assert row["timed_steps"] == 1 and math.isfinite(row["p50_ms"]) and row["p50_ms"] > 0
    assert "(frame 8 of 40, stopped by --max-seconds)" in capsys.readouterr().out


@pytest.mark.slow
def test_out_of_memory_is_reported_and_the_bench_goes_on(bench, monkeypatch, capsys):
    make_session = bench.make_session

    def short_of_memory(model, engine, streams, *args):
        if streams == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return make_session(model, engine, streams, *args)

    monkeypatch.setattr(bench, "make_session", short_of_memory)
    argv = "--streams 2,1 --frames 8 --left-chunks 2 --model tiny --device cpu --warmup 1 --no-vocoder"
    report = bench.main(argv.split())
    engines = len(engines_expected(bench))
    rows = report["rows"]
    assert [r["error"] for r in rows] == [bench.OUT_OF_MEMORY] * engines + [None] * engines
    assert all(r["frames_reached"] == 8 for r in rows[engines:])
    body = table_rows(capsys.readouterr().out)
    assert [cells[3] for cells in body[:engines]] == ["out of memory"] * engines
    assert [cells[3] for cells in body[engines:]] == [f"{r['p50_ms']:.2f}" for r in rows[engines:]]


class EngineSession(TokenStreamingSession):
    """A session that takes the engine keywords (the packed engine underneath): what it was given."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, *args, engine="packed", max_history_frames=None, cuda_graph=False, **kwargs):
        type(self).calls.append(
            {"engine": engine, "max_history_frames": max_history_frames, "cuda_graph": cuda_graph}
        )
        super().__init__(*args, **kwargs)


@pytest.mark.slow
def test_each_engine_gets_its_keywords(bench, monkeypatch):
    monkeypatch.setattr(bench, "TokenStreamingSession", EngineSession)
    monkeypatch.setattr(EngineSession, "calls", [])
    argv = "--streams 1 --frames 12 --left-chunks none,2 --model tiny --device cpu --warmup 1 --no-vocoder"
    report = bench.main(argv.split())
    assert [(r["engine"], r["left_chunks"]) for r in report["rows"]] == [
        ("static", None),
        ("packed", None),
        ("static", 2),
        ("packed", 2),
    ]
    assert all(r["error"] is None and r["frames_reached"] == 12 for r in report["rows"])
    # the static engine's unbounded caches hold the whole history; bounded ones need no capacity
    assert EngineSession.calls == [
        {"engine": "static", "max_history_frames": 12, "cuda_graph": False},
        {"engine": "packed", "max_history_frames": None, "cuda_graph": False},
        {"engine": "static", "max_history_frames": None, "cuda_graph": False},
        {"engine": "packed", "max_history_frames": None, "cuda_graph": False},
    ]
    assert report["notes"] == []


def test_the_graph_engine_needs_a_gpu(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--engines", "graph,static", "--device", "cpu"])
    assert "graph" not in bench.parse_args(["--device", "cpu"]).engines
