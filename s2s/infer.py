"""Run a trained model on a recording: `python -m s2s.infer in.wav out.wav [key=value ...]` (or `s2s-infer`).

The user's side of a conversation goes in (a mono file, or one channel of a stereo one); the model
listens to it chunk by chunk as it would live, and what it says comes out as audio at the model's
sample rate: the system alone, or a stereo user | system file with `stereo_out=true`. Beside it, a
JSON timeline: per 40 ms frame the speaking state and (model v2) the sampled token, the spans in
which the system speaks and, for model v2, the words of each reply.

Options: model=DIR_or_CKPT (an artifact from `python -m s2s.pretrained export`, a training
checkpoint, or a run directory: the checkpoint it chose; default README command 1's run),
chunk=FRAMES (default the model's), channel=0|1|mix (which channel of a stereo file is the user;
required for stereo input), stereo_out=true|false, device=cpu, threads=N (CPU intra-op threads:
default 1, as a chunk's tensors are too small to share; two threads on a busy 2-core machine made a
10 s recording take 21.7 s instead of 1.1 s), seed=N, temperature=T, top_k=K, bos_bias=B,
eos_bias=B, pad_bias=B, state_gain=G (default: the gain the run chose on validation, else 4),
greedy_words=true|false, onset_temperature=T, onset_quantile=Q|drawn and stop_gain=G (default:
as the run was validated; model v2's sampling),
history_seconds=S (how far back attention reaches, inf: unlimited; default: the history the run's
checkpoint was chosen with, else the model's), timeline=PATH (default out.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from s2s.cli_options import OptionError, boolean, optional, parse_options
from s2s.data.audio import AudioError, load_audio, resample, save_audio
from s2s.data.tokens import BOS, EOS, SPECIALS, TokenVocabulary
from s2s.models.token_duplex import TokenDuplexModel
from s2s.models.token_sampling import DRAWN, SamplingConfig, parse_onset_quantile
from s2s.pretrained import (
    PretrainedError,
    load_artifact,
    require_model,
    validated_history,
    validated_sampling,
)
from s2s.streaming.cpu_threads import cpu_threads
from s2s.streaming.history import resolve_left_chunks
from s2s.streaming.session import StreamingSession
from s2s.streaming.token_session import streaming_session
from s2s.training.checkpoints import CheckpointError

DEFAULT_MODEL = "outputs/train/tiny-synth-auto"  # README command 1's run: the checkpoint it chose
TIMELINE_FORMAT = "s2s-timeline/1"


@dataclass(frozen=True)
class InferOptions:
    """How a recording is streamed; checked before the model loads."""

    channel: int | str | None = None  # the user's channel of a stereo file: 0, 1 or "mix"
    chunk: int | None = None  # model frames per step (None: the model's)
    stereo_out: bool = False  # write user | system instead of the system alone
    device: str = "cpu"
    threads: int = 1  # torch's CPU threads while streaming (small per-chunk tensors: 1 is fastest)
    seed: int = 0  # model v2: the sampling seed of the stream
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # seconds of history attention reaches back (inf: unlimited); None: the history the run's checkpoint
    # was chosen with where main() knows it, else the model's left_chunks (s2s/streaming/history.py)
    history_seconds: float | None = None

    def __post_init__(self):
        if (
            self.channel is not None
            and self.channel != "mix"
            and not (isinstance(self.channel, int) and self.channel >= 0)
        ):
            raise OptionError(f"channel must be a channel index (0, 1, ...) or 'mix', got {self.channel!r}")
        if self.chunk is not None and self.chunk < 1:
            raise OptionError(f"chunk must be >= 1 model frame, or null for the model's, got {self.chunk}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise OptionError(f"device={self.device} but no CUDA GPU is visible here; use device=cpu")
        if self.threads < 1:
            raise OptionError(f"threads must be >= 1 (CPU threads while streaming), got {self.threads}")
        if self.history_seconds is not None and not self.history_seconds > 0:
            raise OptionError(f"history_seconds must be > 0 (inf: unlimited), got {self.history_seconds}")


@dataclass(frozen=True)
class InferResult:
    audio: Path
    timeline: Path
    frames: int  # model frames streamed (the tail padded to a whole frame included)
    seconds: float  # of input audio
    wall_seconds: float


def user_channel(audio: torch.Tensor, channel: int | str | None, path: Path) -> tuple[torch.Tensor, object]:
    """The user's (samples,) signal of a (channels, samples) file, and the channel it came from."""
    channels = audio.shape[0]
    if channel is None:
        if channels == 1:
            return audio[0], 0
        raise AudioError(
            f"{path} has {channels} channels: pass channel=0 or channel=1 to say which one is the user "
            "(s2s's dialogues put the user on channel 0, moshi's on channel 1), or channel=mix to average "
            "them"
        )
    if channel == "mix":
        return audio.mean(dim=0), "mix"
    if channel >= channels:
        raise AudioError(
            f"{path} has {channels} channel(s); channel={channel} does not exist (counted from 0)"
        )
    return audio[channel], channel


def infer_file(
    model,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    options: InferOptions | None = None,
    timeline_path: str | os.PathLike | None = None,
    vocabulary: TokenVocabulary | None = None,
    model_name: str | None = None,
    validated_history: float | None = None,
) -> InferResult:
    """Stream the user's channel of `in_path` through `model`; write the system audio (or user |
    system) to `out_path` and the timeline JSON to `timeline_path` (default: out_path with .json).
    `vocabulary` (the system's tokens) names the tokens in the timeline; `validated_history` (seconds,
    the history the run's checkpoint was chosen with) applies where `options` give none, never past
    the model's own left_chunks (s2s.streaming.history.resolve_left_chunks)."""
    started = time.perf_counter()
    options = options or InferOptions()
    in_path, out_path = Path(in_path), Path(out_path)
    timeline_path = out_path.with_suffix(".json") if timeline_path is None else Path(timeline_path)
    if out_path.suffix.lower() != ".wav":
        raise AudioError(f"the output {out_path} must be a .wav path (the system audio is written as wav)")
    if in_path.resolve() in (out_path.resolve(), timeline_path.resolve()):
        raise AudioError(f"the output would overwrite the input {in_path}: choose another out path")
    audio, rate = load_audio(in_path)  # refuses a missing, truncated or non-audio file by name
    user, channel = user_channel(audio, options.channel, in_path)
    session = _session(model, options, validated_history)
    config = model.config
    pieces: dict[str, list] = {"audio": [], "speaking": [], "tokens": []}
    padded = 0
    with cpu_threads(options.threads):
        for chunk in session.stream(user, rate):
            pieces["audio"].append(chunk.audio[0].float().cpu())
            pieces["speaking"].append(chunk.speaking[0].float().cpu())
            if chunk.tokens is not None:
                pieces["tokens"].append(chunk.tokens[0].cpu())
            padded = chunk.padded_samples
    system = torch.cat(pieces["audio"])
    speaking = torch.cat(pieces["speaking"])
    tokens = torch.cat(pieces["tokens"]) if pieces["tokens"] else None
    heard = len(system) - padded  # the input's length at the model's rate: the output is cut to it
    system = system[:heard]
    if options.stereo_out:
        user_at_model_rate = resample(user[None], rate, config.sample_rate)[0][:heard]
        save_audio(out_path, torch.stack([user_at_model_rate, system]), config.sample_rate)
    else:
        save_audio(out_path, system[None], config.sample_rate)
    frame_seconds = config.frame_samples / config.sample_rate
    record = {
        "format": TIMELINE_FORMAT,
        "input": str(in_path),
        "model": model_name,
        "channel": channel,
        "input_sample_rate": rate,
        "sample_rate": config.sample_rate,
        "chunk_frames": session.chunk,
        "frame_seconds": frame_seconds,
        "frames": len(speaking),
        "padded_samples": padded,
        "audio": str(out_path),
        "stereo_out": options.stereo_out,
        **timeline(speaking, tokens, frame_seconds, vocabulary),
    }
    if isinstance(model, TokenDuplexModel):
        record["sampling"] = {**dataclasses.asdict(options.sampling), "seed": options.seed}
    partial = timeline_path.with_name(timeline_path.name + ".partial")
    timeline_path.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, timeline_path)
    return InferResult(out_path, timeline_path, len(speaking), heard / config.sample_rate,
                       time.perf_counter() - started)  # fmt: skip


def _session(model, options: InferOptions, validated_history: float | None = None) -> StreamingSession:
    device = next(model.parameters()).device
    config = model.config
    chunk = config.chunk if options.chunk is None else options.chunk
    left_chunks, _ = resolve_left_chunks(
        config.left_chunks, chunk / config.frame_rate, options.history_seconds, validated_history
    )
    return streaming_session(
        model, chunk=options.chunk, left_chunks=left_chunks, device=device, sampling=options.sampling,
        seeds=torch.tensor([options.seed]),
    )  # fmt: skip


def timeline(
    speaking: torch.Tensor, tokens: torch.Tensor | None, frame_seconds: float, vocabulary=None
) -> dict:
    """Per frame the speaking state (and tokens), the spans the system speaks, model v2's replies."""
    talking = (speaking >= 0.5).numpy()
    spans, start = [], None
    for index, on in enumerate([*talking.tolist(), False]):
        if on and start is None:
            start = index
        elif not on and start is not None:
            spans.append({"start": round(start * frame_seconds, 3), "end": round(index * frame_seconds, 3)})
            start = None
    result = {
        "speaking": [round(float(p), 4) for p in speaking],
        "speaking_segments": spans,
        "tokens": None if tokens is None else tokens.tolist(),
        "token_names": None,
        "replies": None,
    }
    if tokens is not None:
        names = vocabulary.decode(tokens.tolist()) if vocabulary is not None else None
        result["token_names"] = names
        result["replies"] = _replies(tokens.tolist(), names, frame_seconds)
    return result


def _replies(tokens: list[int], names: list[str] | None, frame_seconds: float) -> list[dict]:
    """Each BOS .. EOS span: when it opens and closes (None: still open at the end) and its words."""
    replies, current = [], None
    for index, token in enumerate(tokens):
        if token == BOS:
            current = {"start": round(index * frame_seconds, 3), "end": None, "words": []}
            replies.append(current)
        elif current is not None and token == EOS:
            current["end"] = round((index + 1) * frame_seconds, 3)
            current = None
        elif current is not None and token >= len(SPECIALS):
            current["words"].append(names[index] if names is not None else token)
    return replies


USAGE = (
    "usage: python -m s2s.infer IN.wav OUT.wav [model=DIR_or_CKPT] [chunk=FRAMES] [channel=0|1|mix] "
    "[stereo_out=true] [device=cpu] [threads=1] [seed=0] [temperature=0.7] [top_k=0] [bos_bias=0] "
    "[eos_bias=0] [pad_bias=0] [state_gain=4] [greedy_words=false] [onset_temperature=T] "
    "[onset_quantile=Q|drawn] [stop_gain=G] [history_seconds=S] [timeline=OUT.json]"
)
SAMPLING_KEYS = {
    "temperature": float, "top_k": int, "pad_bias": float, "bos_bias": float, "eos_bias": float,
    "state_gain": float, "greedy_words": boolean, "onset_temperature": float,
    "onset_quantile": lambda text: DRAWN if text.strip() == DRAWN else float(text), "stop_gain": float,
}  # fmt: skip


def _channel(value: str):
    return "mix" if value.strip().lower() == "mix" else int(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parsers = {
        "model": str, "chunk": optional(int), "channel": optional(_channel), "stereo_out": boolean,
        "device": str, "threads": int, "seed": int, "timeline": optional(str), "history_seconds": float,
        **SAMPLING_KEYS,
    }  # fmt: skip
    try:
        positional, values = parse_options(argv, parsers, USAGE)
        if len(positional) != 2:
            raise OptionError(f"expected an input and an output wav, got {positional}\n{USAGE}")
        given = {k: values.pop(k) for k in SAMPLING_KEYS if k in values}
        onset = parse_onset_quantile(given.pop("onset_quantile", None))  # None: as the run was validated
        sampling = SamplingConfig(**given)
        model_path = Path(values.pop("model", DEFAULT_MODEL))
        timeline_path = values.pop("timeline", None)
        options = InferOptions(sampling=sampling, **values)
        in_path = Path(positional[0])
        if not in_path.is_file():
            raise AudioError(f"input {in_path} does not exist; pass a wav or flac file")
        pretrained = load_artifact(require_model(model_path), options.device)
        sampling = validated_sampling(  # what was not given: as the run was validated
            sampling, pretrained.provenance, state_gain=given.get("state_gain"), onset_quantile=onset,
            stop_gain=given.get("stop_gain"),
        )  # fmt: skip
        options = dataclasses.replace(options, sampling=sampling)
        vocabularies = pretrained.provenance.vocabularies
        result = infer_file(
            pretrained.model, in_path, positional[1], options, timeline_path,
            vocabulary=None if vocabularies is None else vocabularies["system"], model_name=str(model_path),
            validated_history=validated_history(pretrained.provenance),  # as the checkpoint was chosen
        )  # fmt: skip
    except (OptionError, AudioError, PretrainedError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"streamed {result.seconds:.2f} s ({result.frames} frames) in {result.wall_seconds:.1f} s: "
        f"wrote {result.audio} and {result.timeline}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
