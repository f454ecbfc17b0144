"""scripts/bench_train.py on the CPU: its FLOP count against a hand count of the batch's masks,
and the smoke run's report (throughput, MFU and breakdown tables)."""

import argparse
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_train")


@pytest.mark.slow
def test_run_backend_counts_the_batch_masks(bench):
    """Attention FLOPs are 4 * head_dim * heads * visible pairs per call; the tiny model makes 12
    calls (4 encoder self, 4 decoder self, 4 cross) over the same per-dialogue chunk-causal masks:
    visible keys of row i under chunk C are min(length, (i // C + 1) * C)."""
    config = bench.tiny()
    batch = bench.make_batch(config, dialogues=3, frames=20, generator=torch.Generator().manual_seed(1))
    args = argparse.Namespace(model="tiny", warmup=1, steps=1, profile_steps=1)
    run = bench.run_backend("sdpa", args, batch)

    pairs = 0
    for length, chunk in zip(batch["lengths"].tolist(), batch["chunks"].tolist(), strict=True):
        pairs += sum(min(length, (i // chunk + 1) * chunk) for i in range(length))
    assert run.attention_calls == 12
    assert run.flops.attention_forward == 12 * 4 * config.head_dim * config.heads * pairs
    assert run.flops.frames == int(batch["lengths"].sum())
    assert run.flops.parameters == sum(p.numel() for p in bench.DuplexModel(config).parameters())
    assert run.frames_per_second == pytest.approx(run.flops.frames / run.seconds_per_step)
    assert run.breakdown is not None and run.breakdown.wall_us > 0


@pytest.mark.slow
def test_cpu_smoke_run_prints_every_table(bench, monkeypatch, capsys):
    argv = "--device cpu --model tiny --backends sdpa --dialogues 2 --seconds 1 --warmup 1 --steps 1"
    monkeypatch.setattr(sys, "argv", ["bench_train.py", *argv.split(), "--profile-steps", "1"])
    bench.main()
    out = capsys.readouterr().out
    assert "sdpa: " in out and " model frames/s" in out
    assert "| backend | model frames/s | vs flex |" in out
    assert "peak unknown: pass --peak-tflops" in out  # no datasheet peak for a CPU
    assert "| backend | step ms | model TFLOP/s | MFU | of measured GEMM |" in out
    assert "| run | wall ms/step | attention | matmul | optimizer | elementwise/other | idle |" in out
