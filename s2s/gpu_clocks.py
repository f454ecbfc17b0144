"""The GPU's SM clock, power draw and throttle reasons, sampled while a benchmark times a kernel.

Under its 700 W cap an H100 running our attention backward drops from 1980 MHz to 1200-1800 MHz
(docs/benchmarks.md, stop 50), so a TFLOP/s figure says little without the clock it ran at, and
a kernel that spends less energy per FLOP runs at a higher clock. ``nvidia-smi`` does the sampling
(no NVML binding needed); where it is missing the sampler records nothing.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from dataclasses import dataclass

QUERY = "clocks.sm,power.draw,clocks_throttle_reasons.active"
IDLE = 0x1  # the GPU had no work: a sample from before or after the timed kernels
# Reasons that lower the clock under load: software power cap, hardware slowdown, software and
# hardware thermal slowdown, hardware power brake.
CAPPED = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


@dataclass(frozen=True)
class ClockSample:
    """One line of ``nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits``."""

    sm_mhz: int
    watts: float
    reasons: int  # the throttle-reason bit mask


@dataclass(frozen=True)
class ClockSummary:
    """Busy samples of one timed region: the clock and power it ran at, and how often a power
    or thermal cap held the clock down."""

    samples: int
    median_mhz: float
    min_mhz: int
    median_watts: float
    capped: float  # fraction of the busy samples with a CAPPED reason


def parse_sample(line: str) -> ClockSample | None:
    """A sample from one output line, or None for a line that is not one (a header, "[N/A]")."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 3:
        return None
    try:
        return ClockSample(int(float(fields[0])), float(fields[1]), int(fields[2], 16))
    except ValueError:
        return None


def summarize(samples: list[ClockSample]) -> ClockSummary | None:
    """The busy samples' summary (idle ones dropped), or None when none was busy."""
    busy = [s for s in samples if not s.reasons & IDLE]
    if not busy:
        return None
    return ClockSummary(
        samples=len(busy),
        median_mhz=statistics.median(s.sm_mhz for s in busy),
        min_mhz=min(s.sm_mhz for s in busy),
        median_watts=statistics.median(s.watts for s in busy),
        capped=sum(bool(s.reasons & CAPPED) for s in busy) / len(busy),
    )


class ClockSampler:
    """``with ClockSampler(uuid) as clocks: ...`` samples every ``period_ms`` while the block runs;
    ``clocks.summary`` is then its ``ClockSummary`` (None without nvidia-smi or busy samples)."""

    def __init__(self, gpu_uuid: str | None = None, period_ms: int = 100):
        self.command = None
        if executable := shutil.which("nvidia-smi"):
            self.command = [executable, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]
            self.command += ["-lms", str(period_ms)]
            if gpu_uuid:
                self.command += ["-i", gpu_uuid]
        self.process = None
        self.summary: ClockSummary | None = None

    def __enter__(self) -> ClockSampler:
        if self.command:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        samples = [s for line in output.splitlines() if (s := parse_sample(line))]
        self.summary = summarize(samples)


def torch_gpu_uuid(device=None) -> str | None:
    """nvidia-smi's id of a torch CUDA device ("GPU-<uuid>"), so the sampler reads that card
    whatever CUDA_VISIBLE_DEVICES renumbered."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return f"GPU-{uuid}" if uuid else None
