"""Training-step throughput of the duplex model on one GPU: the same batch and model, attention
through each backend, bf16 autocast, AdamW. Prints model frames per second and the ratio.

    python scripts/bench_train.py                                   # base model, 32 x 20 s dialogues
    python scripts/bench_train.py --backends cute flex --seconds 60 --dialogues 8
    # cute-deterministic: cute under torch.use_deterministic_algorithms (its deterministic backward)

The batch imitates experiment=base_gpu: dialogues of ``--seconds`` (some shorter, so the padded
batch is packed to varlen), per-dialogue chunks drawn from {1, 2, 4, 8} (dynamic-chunk training).
The model is model v1 at the preset sizes (model v2, the configs' default, shares its front end,
encoder and decoder; its input embedding and output heads differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime

import torch
import torch.nn.functional as F

from s2s.models.config import base, tiny
from s2s.models.duplex import DuplexModel

FRAMES_PER_SECOND = 25  # model frames: 10 ms log-mel hop, subsampled 4x


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


def train_step(model: DuplexModel, optimizer: torch.optim.Optimizer, batch: dict) -> torch.Tensor:
    """Forward, masked L1 on mel + BCE on speaking, backward, AdamW step."""
    lengths = batch["lengths"]
    frames = batch["feedback"].shape[1]
    valid = torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch["user_mel"], batch["feedback"], lengths=lengths, chunk=batch["chunks"])
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


def frames_per_second(backend: str, args, batch: dict) -> float:
    """Model frames per second of training steps. ``cute-deterministic`` is cute with
    torch.use_deterministic_algorithms on (Lightning's deterministic=True): its backward runs the
    two-kernel deterministic path."""
    deterministic = backend == "cute-deterministic"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    backend = "cute" if deterministic else backend
    config = dataclasses.replace(base() if args.model == "base" else tiny(), attention_backend=backend)
    torch.manual_seed(0)
    model = DuplexModel(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for _ in range(args.warmup):
        loss = train_step(model, optimizer, batch)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{backend}: non-finite loss {loss.item()}")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.steps):
        train_step(model, optimizer, batch)
    end.record()
    torch.cuda.synchronize()
    seconds_per_step = start.elapsed_time(end) / 1000 / args.steps
    return int(batch["lengths"].sum()) / seconds_per_step


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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train.py needs a CUDA GPU")
    generator = torch.Generator().manual_seed(0)
    frames = int(args.seconds * FRAMES_PER_SECOND)
    config = base() if args.model == "base" else tiny()
    batch = {k: v.cuda() for k, v in make_batch(config, args.dialogues, frames, generator).items()}
    results = {}
    for backend in args.backends:
        results[backend] = frames_per_second(backend, args, batch)
        print(f"{backend}: {results[backend]:,.0f} model frames/s", flush=True)
    gpu = torch.cuda.get_device_name()
    print(
        f"\ntraining step, {args.model} model, {args.dialogues} dialogues x {args.seconds:g} s "
        f"({int(batch['lengths'].sum())} frames), bf16 autocast, {gpu}, {datetime.date.today()}"
    )
    print("| backend | model frames/s | vs flex |\n| --- | --- | --- |")
    for backend, rate in results.items():
        ratio = f"{rate / results['flex']:.2f}x" if "flex" in results else "-"
        print(f"| {backend} | {rate:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
