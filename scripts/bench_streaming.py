"""Step latency of the streaming engine against the number of concurrent streams and their history.

A server runs one TokenStreamingSession for many dialogues at once (one row per stream) and calls
`step` every chunk: each call must take less than the chunk's audio (chunk x 40 ms) or the streams
fall behind. This measures what a step costs as the streams grow in number ({1 .. 4096}) and in
history (--frames, 1500 = 60 s at 25 Hz), with the caches bounded (--left-chunks 16) or not
(none), for each engine the session offers, measured in the same run:

    graph    the static engine's step replayed as one CUDA graph (`cuda_graph=True`; CUDA only)
    static   the preallocated caches, read in place (the new engine), launched eagerly
    packed   the caches packed anew each step (the previous engine: the baseline)

The session picks the engine with its `engine` keyword; a session without that keyword has only
the packed engine and is measured as "packed". For the static engine with unbounded history the
caches hold --frames frames (`max_history_frames`). `--backend` sets the model's attention backend
(the decode calls' backend is printed).

Per (engine, streams, left_chunks): the model is TokenDuplexModel with random (seeded) weights at
the sizes of configs/model/<--model>.yaml, in bf16 on a GPU and float32 on the CPU; the vocoder is
off in the timed step. Every step gets fresh noise (0.05 x randn per stream, from a seeded
generator on the device, made before the step's clock starts). A step is timed with the host clock
between two torch.cuda.synchronize() calls (on the CPU, without them). The first --warmup steps
feed the history but are left out of the figures:

    p50 / p99    step latency over the timed steps; "real time" when p99 < the chunk's duration
    GPU memory   torch.cuda.max_memory_allocated of the configuration (the model's weights included),
                 the peak reset before its session is built; n/a on the CPU
    frame 50 / N the median of the 5 steps around frame 50 and of the last 5 steps (the frame the
                 run reached: --frames, or fewer where --max-seconds stopped it), and their ratio:
                 how much a step's cost grows with the history

A configuration that runs out of GPU memory reads "out of memory" and the next one runs. The
Griffin-Lim vocoder's cost is timed on its own (GriffinLimVocoder.stream on one chunk of mel per
stream, float32): the line under the table.

    python scripts/bench_streaming.py                                 # the full grid (base model, GPU)
    python scripts/bench_streaming.py --streams 1,64,1024 --left-chunks 16 --json streaming.json
    python scripts/bench_streaming.py --engines graph --backend cute --max-seconds 60
    python scripts/bench_streaming.py --device cpu --model tiny --streams 1,2 --frames 24 \\
        --left-chunks none,2                                          # the script's own smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import inspect
import json
import math
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from s2s.data.features import LogMelConfig
from s2s.models import config as presets
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.vocoder import GriffinLimVocoder
from s2s.streaming.token_session import TokenStreamingSession

ENGINES = ("graph", "static", "packed")
WINDOW = 5  # steps whose median is the cost "near" a frame
EARLY_FRAME = 50  # the history at which a step's cost is compared with the last one's
NOISE = 0.05  # the input's level: quiet noise, as a line with nobody speaking
OUT_OF_MEMORY = "out of memory"


@dataclass
class Row:
    """One configuration's figures (times in ms; None where not measured: an error, the CPU's memory)."""

    engine: str
    streams: int
    left_chunks: int | None
    frames: int  # the history asked for (--frames)
    frames_reached: int  # frames each stream holds after the last step (fewer when --max-seconds stopped it)
    timed_steps: int  # steps after the warm-up: the ones the latencies are taken over
    p50_ms: float | None = None
    p99_ms: float | None = None
    real_time: bool | None = None  # p99 < the chunk's duration
    peak_memory_gib: float | None = None
    early_frame: int | None = None  # the frame at the middle of the window near frame 50
    early_ms: float | None = None
    late_frame: int | None = None  # the frame reached
    late_ms: float | None = None
    ratio: float | None = None  # late_ms / early_ms
    stopped: bool = False  # --max-seconds ran out before --frames
    error: str | None = None  # "out of memory", or the exception that ended the configuration


@dataclass
class VocoderRow:
    streams: int
    p50_ms: float | None = None  # one GriffinLimVocoder.stream call on (streams, chunk * r, n_mels)
    per_stream_ms: float | None = None
    error: str | None = None


def preset_config(name: str) -> TokenDuplexConfig:
    """configs/model/<name>.yaml without hydra: the sizes of s2s/models/config.py's preset, the rest
    TokenDuplexConfig's defaults (as scripts/bench_train.py builds it)."""
    return TokenDuplexConfig(**dataclasses.asdict(getattr(presets, name)()))


def parse_list(text: str, convert=int) -> list:
    return [convert(item.strip()) for item in text.split(",") if item.strip()]


def parse_left(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def accepts(cls: type, name: str) -> bool:
    """Whether `cls(...)` takes the keyword `name`: its own __init__ names it, or passes **kwargs on
    to a base class's __init__ that does."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        if name in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_error(error: BaseException, limit: int = 200) -> str:
    message = (str(error).strip().splitlines() or [""])[0]
    return (f"{type(error).__name__}: {message}" if message else type(error).__name__)[:limit]


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def window_near(ends: list[int], times: list[float], frame: int) -> tuple[int, float]:
    """(frame at the window's middle, median ms) of the WINDOW timed steps centred on the step that
    ends nearest `frame` (moved inside the timed steps when it does not fit)."""
    centre = min(range(len(ends)), key=lambda i: abs(ends[i] - frame))
    start = max(0, min(centre - WINDOW // 2, len(ends) - WINDOW))
    window = range(start, min(start + WINDOW, len(ends)))
    return ends[window[len(window) // 2]], statistics.median(times[i] for i in window)


def make_session(model, engine: str | None, streams: int, left: int | None, args, device, options):
    kwargs = {}
    if engine is not None:  # None: the session has no `engine` keyword (its one engine, "packed")
        kwargs["engine"] = "static" if engine == "graph" else engine
        if engine != "packed" and left is None and options["max_history_frames"]:
            kwargs["max_history_frames"] = args.frames
    if engine == "graph":
        kwargs["cuda_graph"] = True
    return TokenStreamingSession(
        model, batch=streams, chunk=args.chunk, left_chunks=left, vocoder=False, device=device, **kwargs
    )


def session_frames(session) -> torch.Tensor | None:
    """The frames each stream has consumed, as the session counts them (None if it does not say)."""
    positions = getattr(getattr(session, "state", None), "positions", None)
    return positions if isinstance(positions, torch.Tensor) else None


def run_configuration(
    model, engine: str | None, streams: int, left: int | None, args, device, options
) -> Row:
    """Step one session through --frames frames of noise (or until --max-seconds) and time each step."""
    label = engine or "packed"
    row = Row(label, streams, left, args.frames, frames_reached=0, timed_steps=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    session = make_session(model, engine, streams, left, args, device, options)
    generator = torch.Generator(device=device).manual_seed(streams * 1000 + (left or 0))
    chunk_samples = session.chunk_samples
    steps = args.frames // args.chunk
    ends, times = [], []
    started = time.perf_counter()
    for index in range(steps):
        audio = NOISE * torch.randn(streams, chunk_samples, device=device, generator=generator)
        synchronize(device)  # the input is ready before the clock starts
        start = time.perf_counter()
        session.step(audio)
        synchronize(device)
        elapsed = time.perf_counter() - start
        row.frames_reached = (index + 1) * args.chunk
        if index >= args.warmup:
            ends.append(row.frames_reached)
            times.append(1000 * elapsed)
        # out of time: stop, once a step past the warm-up has been timed
        if time.perf_counter() - started > args.max_seconds and times and index + 1 < steps:
            row.stopped = True
            break
    counted = session_frames(session)
    if counted is not None and not bool((counted == row.frames_reached).all()):
        raise RuntimeError(
            f"the session counts {counted.tolist()} frames per stream, fed {row.frames_reached}"
        )
    if device.type == "cuda":
        row.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    row.timed_steps = len(times)
    if times:
        row.p50_ms, row.p99_ms = percentile(times, 50), percentile(times, 99)
        row.real_time = row.p99_ms < args.chunk * model.config.frame_samples / model.config.sample_rate * 1000
        row.early_frame, row.early_ms = window_near(ends, times, EARLY_FRAME)
        row.late_frame, row.late_ms = row.frames_reached, statistics.median(times[-WINDOW:])
        row.ratio = row.late_ms / row.early_ms
    return row


def guarded(run, device: torch.device, make_failed):
    """run(), or make_failed(reason) when it fails: out of GPU memory, or any error (the bench goes
    on). The failed run's tensors are freed before the next one starts."""
    reason = None
    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        reason = OUT_OF_MEMORY
    except Exception as error:  # one configuration failing must not hide the others' figures
        reason = f"error: {describe_error(error)}"
    # outside the except block: the traceback (and the session its frames hold) is gone
    free_memory(device)
    return make_failed(reason)


def time_vocoder(streams: int, args, config: TokenDuplexConfig, device: torch.device) -> VocoderRow:
    """GriffinLimVocoder.stream on one chunk of mel per stream, its state carried from call to call."""
    vocoder = GriffinLimVocoder(
        LogMelConfig(sample_rate=config.sample_rate, n_mels=config.n_mels, hop=config.hop)
    ).to(device)
    state = vocoder.initial_state(streams, device)
    generator = torch.Generator(device=device).manual_seed(streams)
    shape = (streams, args.chunk * config.mel_per_frame, config.n_mels)
    times = []
    for index in range(args.warmup + args.vocoder_steps):
        mel = config.mel_mean + config.mel_std * torch.randn(shape, device=device, generator=generator)
        synchronize(device)
        start = time.perf_counter()
        _, state = vocoder.stream(mel, state)
        synchronize(device)
        if index >= args.warmup:
            times.append(1000 * (time.perf_counter() - start))
    p50 = percentile(times, 50)
    return VocoderRow(streams, p50, p50 / streams)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row], chunk: int) -> str:
    lines = [
        "| engine | streams | left_chunks | p50 step ms | p99 step ms | real time | GPU memory GiB "
        f"| step ms at frame {EARLY_FRAME} | step ms at frame N | ratio |",
        "|" + " --- |" * 10,
    ]
    for r in rows:
        left = "none" if r.left_chunks is None else str(r.left_chunks)
        if r.error is not None:
            cells = [r.error, *["-"] * 6]
        else:
            memory = "n/a" if r.peak_memory_gib is None else f"{r.peak_memory_gib:.2f}"
            early = number(r.early_ms)
            if r.early_frame is not None and abs(r.early_frame - EARLY_FRAME) > chunk:
                early += f" (frame {r.early_frame})"
            late = f"{number(r.late_ms)} (frame {r.frames_reached}"
            late += f" of {r.frames}, stopped by --max-seconds)" if r.stopped else ")"
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
            real = "-" if r.real_time is None else ("yes" if r.real_time else "no")
            cells = [number(r.p50_ms), number(r.p99_ms), real, memory, early, late, ratio]
        lines.append(f"| {r.engine} | {r.streams} | {left} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def streams_text(count: int) -> str:
    return f"{count} stream" + ("" if count == 1 else "s")


def vocoder_line(rows: list[VocoderRow]) -> str:
    cells = []
    for r in rows:
        if r.error is not None:
            cells.append(f"{streams_text(r.streams)} {r.error}")
        else:
            cells.append(f"{streams_text(r.streams)} {r.p50_ms:.2f} ms ({r.per_stream_ms:.3f} ms per stream)")
    return "vocoder (GriffinLimVocoder.stream, one chunk, float32, p50 per call): " + "; ".join(cells)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,16,64,256,1024,2048,4096", help="concurrent streams, a list")
    parser.add_argument("--frames", type=int, default=1500, help="history per stream (25 Hz model frames)")
    parser.add_argument(
        "--left-chunks", default="none,16", help="cache bounds in chunks, a list (none: unbounded)"
    )
    parser.add_argument("--chunk", type=int, default=4, help="model frames per step (4 = 160 ms)")
    parser.add_argument("--model", choices=["base", "tiny"], default="base")
    parser.add_argument(
        "--engines",
        default="auto",
        help=f"a list of {', '.join(ENGINES)} (auto: all of them on a GPU, graph left out on the CPU)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "cute", "sdpa", "flex", "reference"],
        default="auto",
        help="the model's attention backend (the decode calls' own is printed)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="auto: bfloat16 on a GPU, float32 on the CPU",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--warmup", type=int, default=3, help="first steps of each run left out of the figures"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop stepping a configuration after this many seconds (once a step past the warm-up is "
        "timed; the frame reached is reported)",
    )
    parser.add_argument("--vocoder-steps", type=int, default=20, help="vocoder calls timed per stream count")
    parser.add_argument("--no-vocoder", action="store_true", help="skip timing the vocoder")
    parser.add_argument("--seed", type=int, default=0, help="of the model's random weights")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.streams = parse_list(args.streams)
    args.left_chunks = parse_list(args.left_chunks, parse_left)
    if args.engines == "auto":
        on_gpu = args.device.startswith("cuda")
        args.engines = ",".join(e for e in ENGINES if on_gpu or e != "graph")
    args.engines = parse_list(args.engines, str)
    unknown = set(args.engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s) {sorted(unknown)}; the engines are {', '.join(ENGINES)}")
    if "graph" in args.engines and not args.device.startswith("cuda"):
        parser.error("the graph engine (CUDA graphs) needs --device cuda")
    if not args.streams or min(args.streams) < 1:
        parser.error(f"--streams must be positive counts, got {args.streams}")
    if any(left is not None and left < 0 for left in args.left_chunks):
        parser.error(f"--left-chunks must be >= 0 or none, got {args.left_chunks}")
    if args.chunk < 1 or args.frames % args.chunk:
        parser.error(f"--frames ({args.frames}) must be a multiple of --chunk ({args.chunk}, >= 1)")
    if args.frames // args.chunk <= args.warmup:
        parser.error(
            f"--frames {args.frames} is {args.frames // args.chunk} steps: --warmup ({args.warmup}) "
            "and at least one timed step are needed"
        )
    return args


def decode_backends(model: TokenDuplexModel, chunk: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The attention backend each engine's decode calls run on (what `auto` picks for the call's
    layout): static, padded keys with used lengths; packed, every stream's keys packed."""
    from s2s.attention import ChunkSpec
    from s2s.attention.api import select_backend
    from s2s.attention.problem import make_problem

    c = model.config
    q = torch.zeros(2, chunk, c.heads, c.head_dim, device=device, dtype=dtype)
    kv = torch.zeros(2, 4 * chunk, c.kv_heads, c.head_dim, device=device, dtype=dtype)
    spec = ChunkSpec(chunk)
    static = make_problem(
        q, kv, kv, spec, seqused_k=torch.full((2,), chunk, dtype=torch.int32, device=device)
    )
    cu = torch.tensor([0, chunk, 2 * chunk], dtype=torch.int32, device=device)
    packed = make_problem(
        q.flatten(0, 1), kv[:, :chunk].flatten(0, 1), kv[:, :chunk].flatten(0, 1), spec, cu, cu
    )
    return {
        "static": select_backend(static, c.attention_backend, False).name,
        "packed": select_backend(packed, c.attention_backend, False).name,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the bench, print its report; returns what --json writes."""
    args = parse_args(argv)
    command = "python scripts/bench_streaming.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: pass --device cpu (a smoke run)")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)

    options = {
        name: accepts(TokenStreamingSession, name) for name in ("engine", "max_history_frames", "cuda_graph")
    }
    engines: list[str | None] = list(args.engines)
    notes = []
    if not options["engine"]:
        notes.append("the session takes no `engine` keyword: only its one engine runs, as packed")
        engines = [None]
    elif "graph" in engines and not options["cuda_graph"]:
        notes.append("the session takes no `cuda_graph` keyword: the graph engine is left out")
        engines = [e for e in engines if e != "graph"]

    torch.manual_seed(args.seed)
    config = dataclasses.replace(preset_config(args.model), attention_backend=args.backend)
    model = TokenDuplexModel(config).to(device=device, dtype=dtype).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    chunk_ms = args.chunk * config.frame_samples / config.sample_rate * 1000
    for note in notes:
        print(f"note: {note}", flush=True)

    rows: list[Row] = []
    for streams in args.streams:
        for left in args.left_chunks:
            for engine in engines:

                def run(engine=engine, streams=streams, left=left):
                    return run_configuration(model, engine, streams, left, args, device, options)

                def failed(reason, engine=engine, streams=streams, left=left):
                    return Row(engine or "packed", streams, left, args.frames, 0, 0, error=reason)

                row = guarded(run, device, failed)
                rows.append(row)
                summary = row.error or f"p50 {number(row.p50_ms)} ms, p99 {number(row.p99_ms)} ms"
                print(f"{row.engine} streams={streams} left_chunks={left}: {summary}", flush=True)
                free_memory(device)

    vocoder_rows: list[VocoderRow] = []
    if not args.no_vocoder:
        for streams in args.streams:
            vocoder_rows.append(
                guarded(
                    lambda streams=streams: time_vocoder(streams, args, config, device),
                    device,
                    lambda reason, streams=streams: VocoderRow(streams, error=reason),
                )
            )

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\nstreaming step, TokenDuplexModel {args.model} ({model.parameter_count() / 1e6:.1f}M parameters, "
        f"random weights, {dtype_name}, {weights:.2f} GiB of weights), chunk {args.chunk} frames "
        f"({chunk_ms:.0f} ms: real time is p99 below it), {args.frames} frames of history, vocoder off, "
        f"{args.warmup} warm-up steps left out"
    )
    backends = decode_backends(model, args.chunk, device, dtype)
    print(
        f"decode attention (model backend {args.backend}): static and graph on {backends['static']}, "
        f"packed on {backends['packed']}"
    )
    print(f"{command}\n{device_name(device)}, torch {torch.__version__}, {date}\n")
    print(table(rows, args.chunk))
    if vocoder_rows:
        print("\n" + vocoder_line(vocoder_rows))
    report = {
        "command": command,
        "device": device_name(device),
        "torch": torch.__version__,
        "date": date,
        "model": args.model,
        "dtype": dtype_name,
        "chunk": args.chunk,
        "chunk_ms": chunk_ms,
        "notes": notes,
        "decode_backends": backends,
        "rows": [dataclasses.asdict(row) for row in rows],
        "vocoder": [dataclasses.asdict(row) for row in vocoder_rows],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
