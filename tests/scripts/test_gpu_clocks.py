"""s2s.gpu_clocks: nvidia-smi's lines parsed, idle samples dropped, the cap share counted, and the
sampler run against a stand-in nvidia-smi on PATH (the real one is on GPU machines only)."""

import random
import stat
import statistics

import pytest

from s2s.gpu_clocks import CAPPED, IDLE, ClockSample, ClockSampler, parse_sample, summarize


def test_parse_sample_reads_a_line_and_rejects_others():
    assert parse_sample("1785, 694.53, 0x0000000000000004") == ClockSample(1785, 694.53, 0x4)
    assert parse_sample(" 345 , 74.7 , 0x0000000000000001 ") == ClockSample(345, 74.7, IDLE)
    for line in ("", "clocks.sm [MHz], power.draw [W], reasons", "1785, [N/A], 0x0", "1785, 694.5"):
        assert parse_sample(line) is None, line


REASONS = [0x0, IDLE, 0x4, 0x8, 0x40, 0x4 | 0x80]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_of_busy_samples_against_a_direct_count(seed):
    rng = random.Random(seed)
    samples = [
        ClockSample(
            rng.randrange(300, 2000),
            rng.uniform(60, 700),
            rng.choice(REASONS),
        )
        for _ in range(rng.randrange(5, 60))
    ]
    busy = [s for s in samples if s.reasons != IDLE]
    summary = summarize(samples)
    if not busy:
        assert summary is None, f"seed {seed}"
        return
    assert summary.samples == len(busy), f"seed {seed}"
    assert summary.median_mhz == statistics.median(s.sm_mhz for s in busy), f"seed {seed}"
    assert summary.min_mhz == min(s.sm_mhz for s in busy), f"seed {seed}"
    assert summary.median_watts == pytest.approx(statistics.median(s.watts for s in busy)), f"seed {seed}"
    capped = sum(s.reasons in (0x4, 0x8, 0x40, 0x4 | 0x80) for s in busy)
    assert summary.capped == pytest.approx(capped / len(busy)), f"seed {seed}"
    assert CAPPED & 0x4 and not CAPPED & IDLE


def test_summary_is_none_when_every_sample_is_idle():
    assert summarize([ClockSample(345, 75.0, IDLE)] * 3) is None
    assert summarize([]) is None


def test_sampler_reads_a_stand_in_nvidia_smi(tmp_path, monkeypatch):
    """The stand-in prints one idle line, then busy lines until it is stopped, and records its
    arguments: the sampler must ask for the card it was given and summarize only busy lines."""
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/args\n'
        'echo "345, 74.5, 0x0000000000000001"\n'
        "while true; do\n"
        'echo "1605, 694.0, 0x0000000000000004"; echo "1980, 400.0, 0x0000000000000000"; sleep 0.01\n'
        "done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with ClockSampler("GPU-1234", period_ms=10) as sampler:
        import time

        time.sleep(0.3)
    summary = sampler.summary
    assert summary is not None and summary.samples >= 2
    assert summary.min_mhz == 1605 and 1605 <= summary.median_mhz <= 1980
    assert 0.0 < summary.capped < 1.0
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("-i") + 1] == "GPU-1234" and args[args.index("-lms") + 1] == "10"


def test_sampler_without_nvidia_smi_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with ClockSampler("GPU-1234") as sampler:
        pass
    assert sampler.summary is None
