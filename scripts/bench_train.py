"""Training-step throughput of the duplex model on one GPU: the same batch and model, attention
through each backend, bf16 autocast, AdamW. Prints model frames per second and the ratio, then
MFU and where the step's GPU time goes.

    python scripts/bench_train.py                                   # base model, 32 x 20 s dialogues
    python scripts/bench_train.py --backends cute flex --seconds 60 --dialogues 8
    # cute-deterministic: cute under torch.use_deterministic_algorithms (its deterministic backward)
    python scripts/bench_train.py --no-profile --peak-tflops 989    # MFU only, against a given peak
    python scripts/bench_train.py --device cpu --model tiny --backends sdpa --dialogues 2 --seconds 2 \\
        --warmup 1 --steps 1 --profile-steps 1                      # the script's own smoke run

The batch imitates experiment=base_gpu: dialogues of ``--seconds`` (some shorter, so the padded
batch is packed to varlen), per-dialogue chunks drawn from {1, 2, 4, 8} (dynamic-chunk training).
The model is model v1 at the preset sizes (model v2, the configs' default, shares its front end,
encoder and decoder; its input embedding and output heads differ).

MFU: model FLOPs per step are 6 x parameters x model frames plus the attention of the exact masks
(forward 4 * head_dim * visible pairs per query head, backward 2.5x), as
s2s/training/step_profile.py counts them, over the dense bf16 peak of the GPU's datasheet (989
TFLOP/s on H100 SXM and H200; ``--peak-tflops`` overrides). A large bf16 GEMM is timed beside it:
what the tensor cores reach here. The breakdown profiles a few steps with torch.profiler and sorts
their kernels by name into attention, matmul, optimizer and elementwise/other; idle is the steps'
wall time that no kernel covers (host overhead, syncs). The profiler slows the host, so the
profiled wall time per step is longer than the timed one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from s2s.models.config import base, tiny
from s2s.models.duplex import DuplexModel
from s2s.training.step_profile import (
    CATEGORIES,
    StepBreakdown,
    StepFlops,
    achieved_tflops,
    breakdown,
    count_attention_flops,
    datasheet_peak_tflops,
    format_breakdown,
    kernels_and_window,
    mfu,
)

FRAMES_PER_SECOND = 25  # model frames: 10 ms log-mel hop, subsampled 4x
STEP_RANGE = "train_step"  # record_function name around each profiled step


def make_batch(config, dialogues: int, frames: int, generator: torch.Generator) -> dict:
    lengths = torch.full((dialogues,), frames)
    lengths[dialogues // 2 :] = torch.randint(
        frames // 2, frames + 1, (dialogues - dialogues // 2,), generator=generator
    )
    chunks = torch.tensor([1, 2, 4, 8])[torch.randint(0, 4, (dialogues,), generator=generator)]
    return {
        "user_mel": 3 * torch.randn(dialogues, 4 * frames, config.n_mels, generator=generator) - 6,
        "feedback": torch.randn(dialogues, frames, config.feedback_dim, generator=generator),
        "target_mel": 3 * torch.randn(dialogues, 4 * frames, config.n_mels, generator=generator) - 6,
        "speaking": (torch.rand(dialogues, frames, generator=generator) > 0.5).float(),
        "lengths": lengths,
        "chunks": chunks.to(torch.int32),
    }


def forward(model: DuplexModel, batch: dict):
    with torch.autocast(batch["lengths"].device.type, dtype=torch.bfloat16):
        return model(batch["user_mel"], batch["feedback"], lengths=batch["lengths"], chunk=batch["chunks"])


def train_step(model: DuplexModel, optimizer: torch.optim.Optimizer, batch: dict) -> torch.Tensor:
    """Forward, masked L1 on mel + BCE on speaking, backward, AdamW step."""
    lengths = batch["lengths"]
    frames = batch["feedback"].shape[1]
    valid = torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
    out = forward(model, batch)
    mel_valid = valid.repeat_interleave(4, dim=1)[..., None]
    mel_loss = ((out.mel.float() - batch["target_mel"]).abs() * mel_valid).sum() / (mel_valid.sum() * 80)
    speak_loss = F.binary_cross_entropy_with_logits(
        out.speaking_logit.float()[valid], batch["speaking"][valid]
    )
    loss = mel_loss + speak_loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean seconds per call: CUDA events on a GPU, the host clock elsewhere."""
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / calls


def measured_gemm_tflops(size: int = 8192, calls: int = 50) -> float:
    """TFLOP/s of a square bf16 matmul on this GPU: the tensor cores' practical rate (after a
    warm-up long enough for the clocks to settle)."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty_like(a)
    for _ in range(20):
        torch.mm(a, b, out=c)
    seconds = seconds_per_call(lambda: torch.mm(a, b, out=c), calls, torch.device("cuda"))
    return 2 * size**3 / seconds / 1e12


def profile_steps(model, optimizer, batch: dict, steps: int) -> StepBreakdown:
    """Run ``steps`` training steps under torch.profiler and sort their GPU time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = batch["lengths"].device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function(STEP_RANGE):
                train_step(model, optimizer, batch)
        synchronize(device)  # inside, so the last step's kernels are recorded
    kernels, window = kernels_and_window(prof.events(), STEP_RANGE)
    return breakdown(kernels, window, steps)


@dataclasses.dataclass
class BackendRun:
    """One backend's figures: timed throughput, FLOPs per step and the profiled breakdown."""

    backend: str
    seconds_per_step: float
    frames_per_second: float
    flops: StepFlops
    attention_calls: int
    breakdown: StepBreakdown | None = None
    profile_error: str | None = None


def run_backend(backend: str, args, batch: dict) -> BackendRun:
    """Model frames per second of training steps, the step's FLOPs and (unless --no-profile) its
    breakdown. ``cute-deterministic`` is cute with torch.use_deterministic_algorithms on
    (Lightning's deterministic=True): its backward runs the two-kernel deterministic path."""
    name = backend
    deterministic = backend == "cute-deterministic"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    backend = "cute" if deterministic else backend
    device = batch["lengths"].device
    config = dataclasses.replace(base() if args.model == "base" else tiny(), attention_backend=backend)
    torch.manual_seed(0)
    model = DuplexModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    frames = int(batch["lengths"].sum())
    with count_attention_flops() as counted:  # in grad mode, as training runs: no extra compiles
        forward(model, batch)
    flops = StepFlops(sum(p.numel() for p in model.parameters()), frames, counted.flops)
    for _ in range(args.warmup):
        loss = train_step(model, optimizer, batch)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{backend}: non-finite loss {loss.item()}")
    seconds = seconds_per_call(lambda: train_step(model, optimizer, batch), args.steps, device)
    run = BackendRun(name, seconds, frames / seconds, flops, counted.calls)
    if args.profile_steps > 0:
        try:
            run.breakdown = profile_steps(model, optimizer, batch, args.profile_steps)
        except Exception as error:  # the throughput and MFU stand without the profile
            run.profile_error = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return run


def mfu_line(run: BackendRun, peak: float | None, gemm: float | None) -> str:
    """One backend's model FLOP rate against the datasheet peak and the measured GEMM rate."""
    rate = achieved_tflops(run.flops.total, run.seconds_per_step)
    parts = [
        f"{run.backend}: {rate:.1f} TFLOP/s of model FLOPs "
        f"({run.flops.dense / 1e12:.2f} dense + {run.flops.attention / 1e12:.2f} attention TFLOP per step "
        f"in {1000 * run.seconds_per_step:.1f} ms)"
    ]
    parts.append(f"MFU {100 * mfu(run.flops.total, run.seconds_per_step, peak):.1f}%" if peak else "MFU n/a")
    if gemm:
        parts.append(f"{100 * rate / gemm:.1f}% of the measured GEMM rate")
    return ", ".join(parts)


def breakdown_line(b: StepBreakdown) -> str:
    """The profiled step in one line, printed as soon as a backend is done."""
    cells = ", ".join(f"{c} {b.per_step_ms(c):.1f} ({100 * b.share(c):.0f}%)" for c in (*CATEGORIES, "idle"))
    return f"profiled: {b.wall_us / b.steps / 1000:.1f} ms/step wall: {cells}"


def print_mfu_table(runs: list[BackendRun], peak: float | None, peak_source: str, gemm: float | None) -> None:
    first = runs[0].flops
    print(
        f"\nMFU: model FLOPs per step = 6 x {first.parameters / 1e6:.1f}M parameters x {first.frames} frames "
        f"({first.dense / 1e12:.2f} TFLOP) + attention from the exact masks, forward + 2.5x backward "
        f"({first.attention / 1e12:.3f} TFLOP, {runs[0].attention_calls} calls per forward); "
        + (f"peak {peak:.0f} TFLOP/s ({peak_source})" if peak else "peak unknown: pass --peak-tflops")
        + (f"; measured bf16 GEMM 8192^3: {gemm:.0f} TFLOP/s" if gemm else "")
    )
    print("| backend | step ms | model TFLOP/s | MFU | of measured GEMM |\n| --- | --- | --- | --- | --- |")
    for run in runs:
        rate = achieved_tflops(run.flops.total, run.seconds_per_step)
        share = f"{100 * rate / peak:.1f}%" if peak else "n/a"
        of_gemm = f"{100 * rate / gemm:.1f}%" if gemm else "n/a"
        print(f"| {run.backend} | {1000 * run.seconds_per_step:.1f} | {rate:.1f} | {share} | {of_gemm} |")


def print_breakdowns(runs: list[BackendRun], steps: int) -> None:
    profiled = {run.backend: run.breakdown for run in runs if run.breakdown is not None}
    print(
        f"\nstep breakdown: torch.profiler over {steps} steps, kernels sorted by name; ms per step "
        "(share of the profiled wall time); idle = wall - time any kernel runs"
    )
    if profiled:
        print(format_breakdown(profiled))
    for run in runs:
        if run.profile_error:
            print(f"{run.backend}: no profile ({run.profile_error})")
    for backend, b in profiled.items():
        for category in CATEGORIES:
            for name, us in b.top_kernels.get(category, []):
                print(f"  {backend} {category}: {us / b.steps / 1000:.2f} ms/step  {name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", nargs="+", default=["cute", "cute-deterministic", "flex"])
    parser.add_argument("--model", choices=["base", "tiny"], default="base")
    parser.add_argument("--dialogues", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run)")
    parser.add_argument(
        "--peak-tflops", type=float, help="dense bf16 peak for MFU (default: the datasheet's, by GPU name)"
    )
    parser.add_argument("--profile-steps", type=int, default=3, help="steps profiled for the breakdown")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    parser.add_argument("--no-gemm", action="store_true", help="skip timing the reference bf16 GEMM")
    args = parser.parse_args()
    if args.no_profile:
        args.profile_steps = 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train.py needs a CUDA GPU (or --device cpu for a smoke run)")
    generator = torch.Generator().manual_seed(0)
    frames = int(args.seconds * FRAMES_PER_SECOND)
    config = base() if args.model == "base" else tiny()
    batch = {k: v.to(device) for k, v in make_batch(config, args.dialogues, frames, generator).items()}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak, peak_source = args.peak_tflops, "--peak-tflops"
    if peak is None and device.type == "cuda":
        peak, peak_source = datasheet_peak_tflops(gpu), f"{gpu} datasheet, dense bf16"
    gemm = None
    if device.type == "cuda" and not args.no_gemm:
        try:
            gemm = measured_gemm_tflops()
        except Exception as error:  # MFU stands without it
            print(f"bf16 GEMM not timed: {type(error).__name__}: {error}")
    runs: list[BackendRun] = []
    for backend in args.backends:
        run = run_backend(backend, args, batch)
        runs.append(run)
        print(f"{backend}: {run.frames_per_second:,.0f} model frames/s", flush=True)
        print("  " + mfu_line(run, peak, gemm), flush=True)
        if run.breakdown is not None:
            print("  " + breakdown_line(run.breakdown), flush=True)
        elif run.profile_error:
            print(f"  no profile: {run.profile_error}", flush=True)
    results = {run.backend: run.frames_per_second for run in runs}
    print(
        f"\ntraining step, {args.model} model, {args.dialogues} dialogues x {args.seconds:g} s "
        f"({int(batch['lengths'].sum())} frames), bf16 autocast, {gpu}, {datetime.date.today()}"
    )
    print("| backend | model frames/s | vs flex |\n| --- | --- | --- |")
    for backend, rate in results.items():
        ratio = f"{rate / results['flex']:.2f}x" if "flex" in results else "-"
        print(f"| {backend} | {rate:,.0f} | {ratio} |")
    print_mfu_table(runs, peak, peak_source, gemm)
    if args.profile_steps > 0:
        print_breakdowns(runs, args.profile_steps)


if __name__ == "__main__":
    main()
