"""scripts/bench_serve.py, the load test, on the CPU with the tiny model: a server per client count,
real-time clients over real websockets; every chunk sent is answered (none dropped with one client),
the round trips and the server's step times are measured, and the table and --json say the same."""

import json
import math

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_serve")


def test_the_load_test_answers_every_chunk_and_reports_round_trips(bench, tmp_path, capsys):
    out = tmp_path / "serve.json"
    options = "--clients 1,2 --seconds 4 --preset tiny --client-processes 1"
    rows = bench.main([*options.split(), "--json", str(out)])
    printed = capsys.readouterr().out
    assert [r.clients for r in rows] == [1, 2], printed
    for row in rows:
        assert row.error is None and row.refused == 0, printed
        assert row.expected == row.clients * (4 * 16000 // 2560), printed  # whole chunks of 4 s per client
        assert row.replies + row.dropped_chunks >= row.expected, printed
        assert 0 < row.round_trip_p50_ms <= row.round_trip_p99_ms < 5000, printed
        assert 0 < row.step_p50_ms <= row.step_p99_ms, printed
    assert rows[0].dropped_chunks == 0 and rows[0].replies == rows[0].expected, printed
    saved = json.loads(out.read_text())
    assert [r["clients"] for r in saved] == [1, 2]
    assert math.isclose(saved[0]["round_trip_p99_ms"], rows[0].round_trip_p99_ms)
    table = [line for line in printed.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(table) == 2, printed


def test_speech_like_audio_is_deterministic_per_seed_and_bounded(bench):
    a, b, c = bench.speech_like(1.0, 3), bench.speech_like(1.0, 3), bench.speech_like(1.0, 4)
    assert (a == b).all() and not (a == c).all()
    assert len(a) == 16000 and float(abs(a).max()) < 1.0
