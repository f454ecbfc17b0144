"""`python -m s2s.serve model=DIR [host= port= device= max_connections= ...]` (or `s2s-serve`).

Loads a model (an exported artifact, a checkpoint or a run directory, as `s2s.infer` does), builds
one streaming session of `max_connections` streams on `device`, and serves the page and its
websocket (s2s.serve.app) until interrupted. Binds to 127.0.0.1 unless `host=` says otherwise: the
server has no authentication, so exposing it is the operator's decision.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from aiohttp import web

from s2s.cli_options import OptionError, boolean, optional, parse_options
from s2s.infer import DEFAULT_MODEL, SAMPLING_KEYS
from s2s.models.token_sampling import SamplingConfig, parse_onset_quantile
from s2s.pretrained import (
    PretrainedError,
    load_artifact,
    require_model,
    validated_history,
    validated_sampling,
)
from s2s.serve.app import make_app
from s2s.serve.hub import HubLimits, ServeHub, dialogue_frame_limit
from s2s.streaming.history import history_of, resolve_left_chunks
from s2s.streaming.precision import streaming_dtype
from s2s.streaming.token_session import streaming_session
from s2s.training.checkpoints import CheckpointError

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts only this machine reaches: no warning


@dataclass(frozen=True)
class ServeOptions:
    """What `python -m s2s.serve` takes; checked before the model loads."""

    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (printed)
    device: str = "cpu"
    max_connections: int = 8  # rows of the batched session: one per concurrent dialogue
    precision: str | None = None  # default: bf16 on a GPU, fp32 on the CPU
    cuda_graph: bool | None = None  # default: on for a GPU
    chunk: int | None = None  # model frames per step (None: the model's)
    history_seconds: float | None = None  # None: as the run was validated, else the model's
    max_dialogue_seconds: float = 600.0  # unbounded history only: a dialogue restarts after this
    # the server's clock ticks this often per chunk, stepping the streams with a whole chunk waiting:
    # more ticks, a shorter wait for the step (at most chunk / ticks), more steps of the whole batch
    ticks_per_chunk: int = 1
    backlog_seconds: float = 1.0  # user audio a connection may queue before the oldest is dropped
    max_pending_replies: int = 32  # replies queued for a client that does not read, before it is dropped
    max_message_bytes: int = 32000  # one client audio message (1 s of int16 at 16 kHz)
    threads: int = 1  # torch's CPU threads (the step's tensors are small; the event loop needs a core)
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # model v2's decoding rules: each as given, else as the run's free-running validation chose
    state_gain: float | None = None
    onset_quantile: float | str | None = None
    stop_gain: float | None = None

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise OptionError(f"port must be 0..65535 (0: any free port), got {self.port}")
        if self.max_connections < 1:
            raise OptionError(f"max_connections must be >= 1, got {self.max_connections}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise OptionError(f"device={self.device} but no CUDA GPU is visible here; use device=cpu")
        if self.cuda_graph and torch.device(self.device).type != "cuda":
            raise OptionError("cuda_graph=true needs device=cuda")
        for name in ("backlog_seconds", "max_dialogue_seconds"):
            if not getattr(self, name) > 0:
                raise OptionError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ticks_per_chunk < 1:
            raise OptionError(f"ticks_per_chunk must be >= 1, got {self.ticks_per_chunk!r}")
        if self.max_pending_replies < 1 or self.max_message_bytes < 2 or self.threads < 1:
            raise OptionError("max_pending_replies and threads must be >= 1, max_message_bytes >= 2")
        if self.history_seconds is not None and not self.history_seconds > 0:
            raise OptionError(f"history_seconds must be > 0 (inf: unlimited), got {self.history_seconds}")


@dataclass
class Served:
    """A running server: its URL, hub and the means to stop it."""

    url: str
    hub: ServeHub
    runner: web.AppRunner
    clock: asyncio.Task

    async def stop(self) -> None:
        self.hub.stop()
        await self.clock
        await self.runner.cleanup()
        self.hub.close()


def build_hub(options: ServeOptions) -> tuple[ServeHub, str]:
    """The model loaded and its session built as the options say; the hub and a line describing it."""
    pretrained = load_artifact(Path(options.model), options.device)
    model, provenance = pretrained.model, pretrained.provenance
    device = torch.device(options.device)
    precision = options.precision or ("bf16" if device.type == "cuda" else "fp32")
    model = model.to(streaming_dtype(precision, device)).eval()
    config = model.config
    chunk = config.chunk if options.chunk is None else options.chunk
    chunk_seconds = chunk / config.frame_rate
    left_chunks, source = resolve_left_chunks(
        config.left_chunks, chunk_seconds, options.history_seconds, validated_history(provenance)
    )
    frame_limit = dialogue_frame_limit(left_chunks, options.max_dialogue_seconds, config.frame_rate)
    cuda_graph = device.type == "cuda" if options.cuda_graph is None else options.cuda_graph
    session = streaming_session(
        model, batch=options.max_connections, chunk=chunk, left_chunks=left_chunks, device=device,
        max_history_frames=frame_limit, cuda_graph=cuda_graph,
        sampling=validated_sampling(
            options.sampling, provenance, state_gain=options.state_gain,
            onset_quantile=options.onset_quantile, stop_gain=options.stop_gain,
        ),
        seeds=torch.arange(options.max_connections) + options.seed,
    )  # fmt: skip
    vocabularies = provenance.vocabularies
    limits = HubLimits(
        backlog_samples=max(session.chunk_samples, int(options.backlog_seconds * config.sample_rate)),
        max_pending_replies=options.max_pending_replies, max_dialogue_frames=frame_limit,
    )  # fmt: skip
    vocabulary = None if vocabularies is None else vocabularies["system"]
    hub = ServeHub(session, limits, vocabulary, ticks_per_chunk=options.ticks_per_chunk)
    history = history_of(left_chunks, chunk_seconds)
    traits = [
        type(model).__name__, f"{precision} on {device}", f"{options.max_connections} streams",
        f"chunk {chunk_seconds * 1000:.0f} ms", f"history {history:.1f} s ({source})",
    ]  # fmt: skip
    if cuda_graph:
        traits.append("CUDA graph")
    if options.ticks_per_chunk > 1:
        traits.append(f"{options.ticks_per_chunk} ticks per chunk")
    return hub, f"{options.model} ({', '.join(traits)})"


def warm_up(hub: ServeHub) -> None:
    """One step of silence on every row (kernels built, a CUDA graph captured) before the first
    client; every row is reset before its dialogue's first step anyway."""
    session = hub.session
    with torch.no_grad():
        session.step(torch.zeros(session.batch, session.chunk_samples, device=session.device))
        session.reset()


async def start(options: ServeOptions, hub: ServeHub | None = None) -> Served:
    """Serve `hub` (default: built from `options`) on options.host:port; returns once it listens."""
    if hub is None:
        hub, _ = build_hub(options)
        warm_up(hub)
    app = make_app(hub, options.model, options.max_message_bytes)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return Served(f"http://{shown}:{port}/", hub, runner, asyncio.create_task(hub.run()))


async def serve(options: ServeOptions) -> None:
    if options.device == "cpu":
        torch.set_num_threads(options.threads)
    hub, described = build_hub(options)
    warm_up(hub)
    served = await start(options, hub)
    print(f"s2s.serve: {described}\ns2s.serve: open {served.url} (Ctrl+C stops)", flush=True)
    if options.host not in LOOPBACK:
        print(f"s2s.serve: warning: listening on {options.host}, not loopback: anyone who can reach this "
              "port can talk to the model (there is no authentication)", flush=True)  # fmt: skip
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await served.stop()


USAGE = (
    "usage: python -m s2s.serve [model=DIR_or_CKPT] [host=127.0.0.1] [port=8765] [device=cpu] "
    "[max_connections=8] [precision=fp32|bf16] [cuda_graph=true|false] [chunk=FRAMES] [history_seconds=S] "
    "[max_dialogue_seconds=600] [ticks_per_chunk=1] [backlog_seconds=1] [max_pending_replies=32] "
    "[max_message_bytes=32000] [threads=1] [seed=0] [temperature=T] [top_k=K] [state_gain=G] ..."
)


def parse(argv: list[str]) -> ServeOptions:
    parsers = {
        "model": str, "host": str, "port": int, "device": str, "max_connections": int,
        "precision": optional(str), "cuda_graph": optional(boolean), "chunk": optional(int),
        "history_seconds": float, "max_dialogue_seconds": float, "ticks_per_chunk": int,
        "backlog_seconds": float, "max_pending_replies": int, "max_message_bytes": int, "threads": int,
        "seed": int, **SAMPLING_KEYS,
    }  # fmt: skip
    positional, values = parse_options(argv, parsers, USAGE)
    if positional:
        raise OptionError(f"s2s.serve takes key=value options only, got {positional}\n{USAGE}")
    given = {k: values.pop(k) for k in SAMPLING_KEYS if k in values}
    rules = {k: given.pop(k) for k in ("state_gain", "stop_gain") if k in given}
    rules["onset_quantile"] = parse_onset_quantile(given.pop("onset_quantile", None))
    return ServeOptions(sampling=SamplingConfig(**given), **rules, **values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse(argv)
        require_model(options.model)
        asyncio.run(serve(options))
    except (OptionError, PretrainedError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
