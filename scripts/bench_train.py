"""Training-step throughput of the duplex model on one GPU: the same batch and model, attention
through each backend, bf16 autocast, AdamW. Prints model frames per second and the ratio, then
MFU and where the step's GPU time goes.

    python scripts/bench_train.py                                   # base model, 32 x 20 s dialogues
    python scripts/bench_train.py --backends cute flex --seconds 60 --dialogues 8
    # cute-deterministic: cute under torch.use_deterministic_algorithms (its deterministic backward)
    python scripts/bench_train.py --no-profile --peak-tflops 989    # MFU only, against a given peak
    python scripts/bench_train.py --backends cute cute+compile      # each block torch.compile'd
    python scripts/bench_train.py --backends cute cute+graphs cute+compile+graphs flex+compile+graphs \
        --seconds 40 --dialogues 32 --length-multiple 8             # the blocks as CUDA graphs (of
                                                                    # compiled blocks: +compile+graphs)
    python scripts/bench_train.py --backends cute+compile+graphs --length-multiple 8 --op-table 30
                                                                    # + which host ops launched the kernels
    python scripts/bench_train.py --device cpu --model tiny --backends sdpa --dialogues 2 --seconds 2 \\
        --warmup 1 --steps 1 --profile-steps 1                      # the script's own smoke run

The model is model v2 (TokenDuplexModel, the configs' default) at the sizes of
configs/model/base.yaml and tiny.yaml. The step is its training step: TokenDuplexLightningModule.run
(SpecAugment's frequency masks, then the token cross-entropy, mel L1, the user's CTC and state), so a
change to the losses is timed too. The batch imitates experiment=base_gpu: dialogues of ``--seconds``
(some shorter, so the padded batch is packed to varlen), per-dialogue chunks drawn from {1, 2, 4, 8}
(dynamic-chunk training), and targets on the grammar of s2s/data/tokens.py: user turns with a pause
inside, the system's replies after them (BOS, a word every few frames, EOS), PAD elsewhere.

MFU: model FLOPs per step are 6 x parameters x model frames plus the attention of the exact masks
(forward 4 * head_dim * visible pairs per query head, backward 2.5x), as
s2s/training/step_profile.py counts them, over the dense bf16 peak of the GPU's datasheet (989
TFLOP/s on H100 SXM and H200; ``--peak-tflops`` overrides). The token embeddings are looked up, not
multiplied: their parameters are left out. A large bf16 GEMM is timed beside it: what the tensor
cores reach here. The breakdown profiles a few steps with torch.profiler and sorts their kernels by
name into attention, matmul, optimizer and elementwise/other; idle is the steps' wall time that no
kernel covers (host overhead, syncs). The profiler slows the host, so the profiled wall time per
step is longer than the timed one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from s2s.data.batching import DialogueBatch
from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS, EOS, PAD, SPECIALS, speaking_from_tokens
from s2s.models import config as presets
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.training.augment import AugmentConfig
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
from s2s.training.token_module import TokenDuplexLightningModule

FRAMES_PER_SECOND = 25  # model frames: 10 ms log-mel hop, subsampled 4x
ROW_BUCKET = 1024  # +rows: the graphed stacks' packed rows, a multiple of this many frames
STEP_RANGE = "train_step"  # record_function name around each profiled step
FIRST_WORD = len(SPECIALS)  # token ids from here on are words


def preset_config(name: str) -> TokenDuplexConfig:
    """configs/model/<name>.yaml without hydra: the sizes of the preset of s2s/models/config.py, the
    rest TokenDuplexConfig's defaults (tests/models/test_model.py checks that the two agree)."""
    return TokenDuplexConfig(**dataclasses.asdict(getattr(presets, name)()))


def randint(low: int, high: int, generator: torch.Generator, size: int | None = None):
    """An int in [low, high) (or a tensor of `size` of them)."""
    values = torch.randint(low, high, (1 if size is None else size,), generator=generator)
    return int(values) if size is None else values


def dialogue_targets(row: int, length: int, config: TokenDuplexConfig, targets: dict, generator) -> None:
    """Fill row `row` of the targets up to `length` model frames: a user turn (words, a pause in its
    middle), then ENDED while the system replies (BOS, a word every 4 frames, EOS), and again."""
    tokens, states = targets["system_tokens"][row], targets["user_state"][row]  # views: written in place
    t = randint(0, 10, generator)
    words = []
    while t + 12 < length:
        turn = min(length - t, randint(12, 50, generator))
        states[t : t + turn] = UserState.SPEAKING
        states[t + turn // 2 : t + turn // 2 + 3] = UserState.PAUSE
        words.append(randint(FIRST_WORD, config.user_vocab, generator, size=turn // 8 + 1))
        t += turn
        next_turn = min(length, t + randint(20, 80, generator))
        states[t:next_turn] = UserState.ENDED
        bos, eos = t + randint(2, 8, generator), next_turn - randint(2, 6, generator)
        if eos - bos > 2:
            tokens[bos], tokens[eos] = BOS, EOS
            said = torch.arange(bos + 2, eos, 4)
            tokens[said] = randint(FIRST_WORD, config.system_vocab, generator, len(said))
        t = next_turn
    user_words = torch.cat(words) if words else torch.zeros(0, dtype=torch.int64)
    targets["user_words"][row, : len(user_words)] = user_words
    targets["user_word_counts"][row] = len(user_words)


def real_frames(batch: DialogueBatch, config: TokenDuplexConfig) -> int:
    return int((batch.frame_lengths // config.mel_per_frame).sum())


def batch_in_another_bucket(
    config: TokenDuplexConfig, batch: DialogueBatch, bucket: int, length_multiple: int
) -> tuple[DialogueBatch, torch.Tensor]:
    """A batch of `batch`'s shape whose real frames fill another multiple of `bucket` packed rows
    (what +rows meets when the next training batch is shorter or longer)."""
    dialogues, frames = batch.system_tokens.shape
    home = -(-real_frames(batch, config) // bucket)
    for seed in range(1, 64):
        other, chunks = make_batch(
            config, dialogues, frames, torch.Generator().manual_seed(seed), False, length_multiple
        )
        if -(-real_frames(other, config) // bucket) != home:
            return other, chunks
    raise SystemExit(f"no batch of {dialogues} x {frames} frames found outside the bucket of {bucket} rows")


def make_batch(
    config: TokenDuplexConfig,
    dialogues: int,
    frames: int,
    generator: torch.Generator,
    equal_lengths: bool = False,
    length_multiple: int = 1,
) -> tuple[DialogueBatch, torch.Tensor]:
    """A DialogueBatch of `dialogues` x `frames` model frames (half of them shorter, unless
    `equal_lengths`: then no padding, the dense attention path) and the chunk size of each dialogue.
    `length_multiple`: the shorter ones cut to a multiple of it (as data.crop_multiple_frames cuts
    training crops: with 8, the longest chunk, the padded batch runs attention unpacked)."""
    r = config.mel_per_frame
    lengths = torch.full((dialogues,), frames)
    if not equal_lengths:
        lengths[dialogues // 2 :] = torch.randint(
            frames // 2, frames + 1, (dialogues - dialogues // 2,), generator=generator
        )
        lengths = torch.clamp(lengths // length_multiple * length_multiple, min=length_multiple)
    chunks = torch.tensor([1, 2, 4, 8])[torch.randint(0, 4, (dialogues,), generator=generator)]
    targets = {
        "system_tokens": torch.full((dialogues, frames), PAD),
        "user_state": torch.full((dialogues, frames), int(UserState.SILENT)),
        "user_words": torch.full((dialogues, frames), PAD),
        "user_word_counts": torch.zeros(dialogues, dtype=torch.int64),
    }
    for row, length in enumerate(lengths.tolist()):
        dialogue_targets(row, length, config, targets, generator)
    frame_lengths = lengths * r
    mel_frames = frames * r
    batch = DialogueBatch(
        names=[f"synthetic-{i}" for i in range(dialogues)],
        user_audio=torch.zeros(dialogues, mel_frames * config.hop),  # the step reads no audio
        system_audio=torch.zeros(dialogues, mel_frames * config.hop),
        audio_lengths=frame_lengths * config.hop,
        frame_lengths=frame_lengths,
        frame_mask=torch.arange(mel_frames)[None, :] < frame_lengths[:, None],
        user_speaking=(targets["user_state"] == UserState.SPEAKING).float().repeat_interleave(r, dim=1),
        system_speaking=speaking_from_tokens(targets["system_tokens"], False).float().repeat_interleave(r, 1),
        user_mel=3 * torch.randn(dialogues, mel_frames, config.n_mels, generator=generator) - 6,
        system_mel=3 * torch.randn(dialogues, mel_frames, config.n_mels, generator=generator) - 6,
        system_tokens=targets["system_tokens"],
        in_reply_at_start=torch.zeros(dialogues, dtype=torch.bool),
        user_state=targets["user_state"],
        user_words=targets["user_words"][:, : max(1, int(targets["user_word_counts"].max()))],
        user_word_counts=targets["user_word_counts"],
        host_frame_lengths=tuple(frame_lengths.tolist()),  # as the collate gives them: no device reads
        host_user_word_counts=tuple(targets["user_word_counts"].tolist()),
    )
    return batch, chunks.to(torch.int32)


def losses(module: TokenDuplexLightningModule, batch: DialogueBatch, chunks: torch.Tensor):
    """The training step's forward and losses, as training_step runs them, under bf16 autocast."""
    with torch.autocast(batch.user_mel.device.type, dtype=torch.bfloat16):
        return module.run(batch, chunks, augment=True)[1]


def train_step(
    module: TokenDuplexLightningModule, optimizer: torch.optim.Optimizer, batch: DialogueBatch, chunks
) -> torch.Tensor:
    """Forward and model v2's training losses, backward, AdamW step."""
    loss = losses(module, batch, chunks).total
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def multiplied_parameters(model: nn.Module) -> int:
    """Parameters that take part in a matmul per frame: all but the embedding tables (looked up)."""
    looked_up = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in looked_up)


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


def profile_steps(
    module, optimizer, batch: DialogueBatch, chunks, steps: int, top_kernels: int = 3, op_rows: int = 0
) -> tuple[StepBreakdown, str | None]:
    """Run ``steps`` training steps under torch.profiler and sort their GPU time (the
    ``top_kernels`` longest kernels of each category kept by name). With ``op_rows``, also the
    table of the host operators whose own kernels take the most device time, by input shapes and
    caller (`host_operator_table`: the Python tracer, ``with_stack``, gives the callers)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = batch.user_mel.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities, record_shapes=op_rows > 0, with_stack=op_rows > 0) as prof:
        for _ in range(steps):
            with record_function(STEP_RANGE):
                train_step(module, optimizer, batch, chunks)
        synchronize(device)  # inside, so the last step's kernels are recorded
    kernels, window = kernels_and_window(prof.events(), STEP_RANGE)
    table = host_operator_table(prof, steps, op_rows, device.type == "cuda") if op_rows > 0 else None
    return breakdown(kernels, window, steps, top=top_kernels), table


def host_operator_table(prof, steps: int, rows: int, on_device: bool) -> str:
    """The ``rows`` host operators whose own kernels take the most device time (on the CPU: their
    own time), grouped by input shapes and owner: the innermost lines of s2s/ or scripts/ that
    called them (for the backward, the autograd node), from the profiler's Python events. Which
    eager op, or which CUDA graph replay, launched the kernels, which their names alone do not say."""
    from torch.autograd import DeviceType

    groups: dict[tuple[str, str, str], list[float]] = {}
    for event in prof.events():
        python = event.name.startswith("<built-in") or ".py(" in event.name  # the Python tracer's own
        if event.device_type != DeviceType.CPU or python or event.name == STEP_RANGE:
            continue
        own = event.self_device_time_total if on_device else event.self_cpu_time_total
        if own <= 0:
            continue
        key = (event.name, str(event.input_shapes)[:60] if event.input_shapes else "-", operator_owner(event))
        totals = groups.setdefault(key, [0.0, 0])
        totals[0] += own
        totals[1] += 1
    ranked = sorted(groups.items(), key=lambda item: item[1][0], reverse=True)[:rows]
    lines = [
        "| ms/step | calls/step | operator | input shapes | called from |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (name, shapes, owner), (total, count) in ranked:
        lines.append(f"| {total / steps / 1000:.2f} | {count / steps:g} | {name[:40]} | {shapes} | {owner} |")
    return "\n".join(lines)


def operator_owner(event) -> str:
    """The two innermost project frames above a profiled operator, or its autograd node."""
    frames, parent = [], event.cpu_parent
    while parent is not None and len(frames) < 2:
        name = parent.name
        if ".py(" in name and ("s2s/" in name or "scripts/" in name):
            frames.append(name.split("/")[-1])
        elif name.startswith("autograd::engine::evaluate_function: ") and not frames:
            return name.split(": ", 1)[1]
        parent = parent.cpu_parent
    return " < ".join(frames) or "-"


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
    compile_note: str | None = None  # "+compile" runs: compile time and graphs
    op_table: str | None = None  # --op-table: the host operators with the most device time


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_backend(backend: str, args, batch: DialogueBatch, chunks: torch.Tensor) -> BackendRun:
    """Model frames per second of training steps, the step's FLOPs and (unless --no-profile) its
    breakdown. ``cute-deterministic`` is cute with torch.use_deterministic_algorithms on
    (Lightning's deterministic=True): its backward runs the two-kernel deterministic path. A
    ``+compile`` suffix (``cute+compile``) compiles each transformer block (module.compile_blocks);
    ``+graphs`` replays the encoder's and decoder's blocks as CUDA graphs (module.cuda_graphs: the
    batch must run unpacked, --equal-lengths or --length-multiple 8); ``+compile+graphs`` captures
    the compiled blocks (attention inside them as the s2s::chunk_attention operator); ``+rows``
    (with +graphs) runs the graphed stacks on the batch's valid frames packed into rows
    (module.cuda_graph_row_bucket = ROW_BUCKET; CuTe attention only)."""
    name = backend
    backend, *suffixes = backend.split("+")
    unknown = set(suffixes) - {"compile", "graphs", "rows"}
    if unknown or len(set(suffixes)) != len(suffixes):
        raise SystemExit(
            f"bad backend suffixes in {name!r}: the suffixes are +compile, +graphs, +rows, each at most once"
        )
    compiled, graphed = "compile" in suffixes, "graphs" in suffixes
    if "rows" in suffixes and not graphed:
        raise SystemExit(f"{name!r}: +rows packs the rows inside the CUDA graphs; add +graphs")
    row_bucket = ROW_BUCKET if "rows" in suffixes else None
    deterministic = backend == "cute-deterministic"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    backend = "cute" if deterministic else backend
    device = batch.user_mel.device
    config = dataclasses.replace(preset_config(args.model), attention_backend=backend)
    torch.manual_seed(0)
    # module v2's SpecAugment (configs/module/v2.yaml: AugmentConfig's defaults); run needs no trainer
    module = TokenDuplexLightningModule(
        TokenDuplexModel(config),
        augment=AugmentConfig(),
        compile_blocks=compiled,
        cuda_graphs=graphed,
        cuda_graph_row_bucket=row_bucket,
    )
    module = module.to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")
    frames = real_frames(batch, config)
    with count_attention_flops() as counted:  # in grad mode, as training runs: no extra compiles
        losses(module, batch, chunks)
    flops = StepFlops(multiplied_parameters(module.model), frames, counted.flops)
    compile_note = None
    if compiled or graphed:
        module.on_fit_start()  # as training sets up: with +graphs, the blocks compiled inside the graphs
        graphs, start = compiled_graphs(), time.perf_counter()
        train_step(module, optimizer, batch, chunks)
        synchronize(device)
        first_step = time.perf_counter() - start
        what = " and ".join(w for w, on in (("compiling", compiled), ("warm-up and capture", graphed)) if on)
        compile_note = f"first step ({what}) {first_step:.1f} s"
        if graphed:
            stack = module.model.encoder.graphs
            if not stack.graphs:
                why = stack.failure or "the batch is packed: pass --equal-lengths or --length-multiple 8"
                raise SystemExit(f"{name}: the step took no graph ({why})")
        if compiled:
            compile_note += f", {compiled_graphs() - graphs} compiled graphs"
    for _ in range(args.warmup):
        loss = train_step(module, optimizer, batch, chunks)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{backend}: non-finite loss {loss.item()}")
    seconds = seconds_per_call(lambda: train_step(module, optimizer, batch, chunks), args.steps, device)
    if compiled and not graphed:
        # another batch shape, as the next training batch brings: dynamic shapes need no new graph
        dialogues, length = batch.system_tokens.shape
        shape = (max(2, dialogues // 2), max(8, 3 * length // 4))
        other, other_chunks = make_batch(module.model.config, *shape, torch.Generator().manual_seed(1))
        built = compiled_graphs()
        train_step(module, optimizer, other.to(device), other_chunks.to(device))
        compile_note += f"; another batch shape built {compiled_graphs() - built} more"
    if row_bucket is not None:
        # the next bucket, as training batches bring: a capture, not another compile of every block
        other, other_chunks = batch_in_another_bucket(
            module.model.config, batch, row_bucket, args.length_multiple
        )
        built, start = compiled_graphs(), time.perf_counter()
        train_step(module, optimizer, other.to(device), other_chunks.to(device))
        synchronize(device)
        compile_note += (
            f"; a batch in another row bucket: first step {time.perf_counter() - start:.1f} s, "
            f"{compiled_graphs() - built} more compiled graphs"
        )
    if graphed:
        compile_note += f", {module.model.encoder.graphs.replays} encoder replays"
    run = BackendRun(name, seconds, frames / seconds, flops, counted.calls, compile_note=compile_note)
    if args.profile_steps > 0:
        try:
            run.breakdown, run.op_table = profile_steps(
                module, optimizer, batch, chunks, args.profile_steps, args.top_kernels, args.op_table
            )
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
    for run in runs:
        if run.op_table:
            print(f"\n{run.backend}: host operators by their own device time, {steps} steps (torch.profiler)")
            print(run.op_table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", nargs="+", default=["cute", "cute-deterministic", "flex"])
    parser.add_argument("--model", choices=["base", "tiny"], default="base")
    parser.add_argument("--dialogues", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--equal-lengths",
        action="store_true",
        help="every dialogue --seconds long: no padding, so attention takes the dense path (as a batch "
        "of crops of experiment=base_gpu's 40 s windows), not the packed one",
    )
    parser.add_argument(
        "--length-multiple",
        type=int,
        default=1,
        help="cut the shorter dialogues to a multiple of this many frames (8: as data.crop_multiple_frames=8 "
        "crops, padded batches then run attention unpacked, and +graphs can replay them)",
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run)")
    parser.add_argument(
        "--peak-tflops", type=float, help="dense bf16 peak for MFU (default: the datasheet's, by GPU name)"
    )
    parser.add_argument("--profile-steps", type=int, default=3, help="steps profiled for the breakdown")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    parser.add_argument(
        "--top-kernels", type=int, default=3, help="longest kernels listed per category of the breakdown"
    )
    parser.add_argument(
        "--op-table",
        type=int,
        default=0,
        metavar="N",
        help="also print the N host operators whose kernels take the most device time, with input "
        "shapes and the project lines (or autograd node) that called them: which eager op or CUDA "
        "graph replay launched the kernels",
    )
    parser.add_argument("--no-gemm", action="store_true", help="skip timing the reference bf16 GEMM")
    parser.add_argument(
        "--json", type=Path, help="also write one row per backend here (step ms, model TFLOP/s, MFU)"
    )
    args = parser.parse_args()
    if args.top_kernels < 1:
        raise SystemExit(f"--top-kernels must be at least 1, got {args.top_kernels}")
    if args.op_table < 0:
        raise SystemExit(f"--op-table must be 0 (off) or a number of rows, got {args.op_table}")
    if args.no_profile:
        args.profile_steps = 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train.py needs a CUDA GPU (or --device cpu for a smoke run)")
    generator = torch.Generator().manual_seed(0)
    frames = int(args.seconds * FRAMES_PER_SECOND)
    batch, chunks = make_batch(
        preset_config(args.model), args.dialogues, frames, generator, args.equal_lengths, args.length_multiple
    )
    batch = batch.to(device)  # the chunk sizes stay on the host, as training draws them
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
        run = run_backend(backend, args, batch, chunks)
        runs.append(run)
        print(f"{backend}: {run.frames_per_second:,.0f} model frames/s", flush=True)
        print("  " + mfu_line(run, peak, gemm), flush=True)
        if run.compile_note:
            print(f"  compile: {run.compile_note}", flush=True)
        if run.breakdown is not None:
            print("  " + breakdown_line(run.breakdown), flush=True)
        elif run.profile_error:
            print(f"  no profile: {run.profile_error}", flush=True)
    results = {run.backend: run.frames_per_second for run in runs}
    print(
        f"\ntraining step, {args.model} model, {args.dialogues} dialogues x {args.seconds:g} s "
        f"({'all of that length' if args.equal_lengths else 'half of them shorter'}) "
        f"({runs[0].flops.frames} frames), bf16 autocast, {gpu}, {datetime.date.today()}"
    )
    print("| backend | model frames/s | vs flex with the same options |\n| --- | --- | --- |")
    for backend, rate in results.items():
        peer = flex_peer(backend)
        ratio = f"{rate / results[peer]:.2f}x" if peer in results else "-"
        print(f"| {backend} | {rate:,.0f} | {ratio} |")
    print_mfu_table(runs, peak, peak_source, gemm)
    if args.profile_steps > 0:
        print_breakdowns(runs, args.profile_steps)
    if args.json:
        rows = [json_row(run, args, peak) for run in runs]
        args.json.write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))


def flex_peer(backend: str) -> str:
    """The flex run a backend is compared with: flex with the same options (cute+compile+graphs
    against flex+compile+graphs, as the issue's ratio is taken with every other optimisation on).
    +rows packs rows only where attention runs on the CuTe kernels: flex's peer runs padded."""
    options = [o for o in backend.split("+")[1:] if o != "rows"]
    return "+".join(["flex", *options])


def json_row(run: BackendRun, args, peak: float | None) -> dict:
    """One backend's figures for --json (what scripts/bench_variants.py compares): the batch that
    names the row, and the step's time, model FLOP rate and MFU."""
    rate = achieved_tflops(run.flops.total, run.seconds_per_step)
    return {
        "backend": run.backend,
        "model": args.model,
        "dialogues": args.dialogues,
        "seconds": args.seconds,
        "frames": run.flops.frames,
        "step_ms": 1000 * run.seconds_per_step,
        "frames_per_second": run.frames_per_second,
        "model_tflops": rate,
        "mfu": mfu(run.flops.total, run.seconds_per_step, peak) if peak else None,
    }


if __name__ == "__main__":
    main()
