"""Streaming evaluation: run test dialogues through a batched StreamingSession as in real time and
score what a full-duplex system is judged by: turn-taking, what it said (with a recognizer),
compute, and audio quality against the reference."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from s2s.data.audio import save_audio
from s2s.data.corpus import read_record
from s2s.data.dataset import DialogueDataset
from s2s.data.features import LogMel
from s2s.data.pitch import PitchConfig, pitch_features
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig, as_validated, parse_onset_quantile
from s2s.plots import Curve, Marks, save_dialogue_figure
from s2s.pretrained import (
    chosen_state_gain,
    load_artifact,
    run_checkpoint,
    validated_history,
    validated_onset_quantile,
    validated_stop_gain,
)
from s2s.streaming import metrics, report
from s2s.streaming.by_voice import by_user_voice, by_voice_rows
from s2s.streaming.events import dialogue_events, failure_rows, state_separability
from s2s.streaming.history import history_of, resolve_left_chunks
from s2s.streaming.precision import streaming_dtype
from s2s.streaming.runner import StreamedDialogue, stream_dialogues

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """What `stream_eval` takes besides the checkpoint and the data; checked before anything loads."""

    chunk: int | None = None
    left_chunks: object = ...
    streams: int = 4
    max_dialogues: int | None = None
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    recognizer: str | None = None
    energy_threshold_db: float = -40.0
    window: float = 3.0
    mcd_seconds: float = 20.0
    examples: int = 3
    progress: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # model v2: temperature, top-k, biases
    # model v2's user-state gain; None: the gain the run chose on validation (free-running
    # validation with state_gains), else sampling.state_gain
    state_gain: float | None = None
    # model v2's onset rule: a quantile in (0, 1), "drawn", or None: the rule the run's free-running
    # validation decoded with (drawn if none)
    onset_quantile: float | str | None = None
    # model v2's say of the user-state head over ending a reply (sampling.stop_gain); None: the gain the
    # run's free-running validation decoded with, else sampling.stop_gain
    stop_gain: float | None = None
    # how far back the streams attend, in seconds (inf: unlimited); None: the history the run's
    # free-running validation streamed with, else the model's left_chunks (s2s/streaming/history.py)
    history_seconds: float | None = None
    # the streaming engine (StreamingSession): "static" (caches read in place) or "packed" (the
    # previous engine); cuda_graph: the static step replayed as one CUDA graph (device=cuda)
    engine: str = "static"
    cuda_graph: bool = False

    def __post_init__(self):
        if self.streams < 1:
            raise ValueError(
                f"streams must be >= 1 (dialogues streamed at once in one session), got {self.streams}"
            )
        if self.max_dialogues is not None and self.max_dialogues < 1:
            raise ValueError(f"max_dialogues must be >= 1, or null for all, got {self.max_dialogues}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 model frame, or null for the model's, got {self.chunk}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, or null for torch's default, got {self.threads}")
        if self.history_seconds is not None and not self.history_seconds > 0:
            raise ValueError(
                "history_seconds must be > 0 (inf: unlimited), or null for the run's own, got "
                f"{self.history_seconds}"
            )
        if self.history_seconds is not None and self.left_chunks is not ...:
            raise ValueError("give history_seconds or left_chunks, not both: they set the same limit")
        if self.state_gain is not None and not self.state_gain >= 0:
            raise ValueError(f"state_gain must be >= 0, or null for the run's own, got {self.state_gain}")
        if self.stop_gain is not None and not (self.stop_gain >= 0 and math.isfinite(self.stop_gain)):
            raise ValueError(
                f"stop_gain must be a finite number >= 0, or null for the run's own, got {self.stop_gain}"
            )
        parse_onset_quantile(self.onset_quantile)  # names the choices
        if self.window <= 0 or self.mcd_seconds <= 0 or self.examples < 0:
            raise ValueError("window and mcd_seconds must be > 0 and examples >= 0")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device} but no CUDA GPU is visible here; use device=cpu")
        streaming_dtype(self.precision, device)  # names the choices when the precision is unknown
        if self.engine not in ("static", "packed"):
            raise ValueError(f"engine must be static or packed, got {self.engine!r}")
        if self.cuda_graph and (self.engine != "static" or device.type != "cuda"):
            raise ValueError(
                "cuda_graph=true needs engine=static and device=cuda (the step is captured on the GPU)"
            )
        if self.recognizer is not None and not Path(self.recognizer).is_file():
            raise FileNotFoundError(
                f"recognizer {self.recognizer} does not exist; train one with "
                "`python scripts/train_recognizer.py` or pass recognizer=null to skip content scores"
            )


def resolved_sampling(
    options: EvalOptions,
    chosen: float | None,
    validated_quantile: float | None = None,
    validated_stop: float | None = None,
) -> tuple[SamplingConfig, str]:
    """The sampling to stream with and where its state gain came from (token_sampling.as_validated)."""
    return as_validated(
        options.sampling, state_gain=options.state_gain, onset_quantile=options.onset_quantile,
        stop_gain=options.stop_gain, chosen_gain=chosen, validated_quantile=validated_quantile,
        validated_stop=validated_stop,
    )  # fmt: skip


def resolved_history(
    options: EvalOptions, model_left_chunks: int | None, chunk_seconds: float, validated: float | None
) -> tuple[int | None, str]:
    """The left_chunks to stream with and where it came from: the options' (left_chunks or
    history_seconds), else the history the run's checkpoint was chosen with, else the model's."""
    if options.left_chunks is not ...:
        return options.left_chunks, "given as left_chunks"
    return resolve_left_chunks(model_left_chunks, chunk_seconds, options.history_seconds, validated)


def recorded_task(data_dir: Path) -> dict | None:
    """The task in the corpus record of `data_dir` or of its parent (a synthetic corpus's split),
    for checking that a recognizer was trained on the same words; None for plain recordings."""
    for folder in (data_dir, data_dir.parent):
        record = read_record(folder)
        if record is not None:
            recipe = record.get("recipe")
            return recipe.get("task") if isinstance(recipe, dict) else None
    return None


def offline_deviation(model: DuplexModel, dialogue: StreamedDialogue, chunk: int, left_chunks) -> float:
    """Max |streamed - offline| over the mel and speaking outputs of one dialogue (same dtype)."""
    parameter = next(model.parameters())
    user = torch.from_numpy(dialogue.user)[None].to(parameter.device)
    with torch.no_grad():
        mel = LogMel().to(parameter.device)(user)
        if model.config.user_pitch:
            pitch = PitchConfig(sample_rate=model.config.sample_rate, hop=model.config.hop)
            mel = model.user_input(mel, pitch_features(user, pitch))
        mel = mel.to(parameter.dtype)
        feedback = dialogue.feedback[None].to(parameter.device)  # model v2: the streamed tokens
        out = model(mel, feedback, chunk=chunk, left_chunks=left_chunks)
    frames = min(out.mel.shape[1] // model.config.mel_per_frame, len(dialogue.speaking))
    r = model.config.mel_per_frame
    mel_dev = (
        (out.mel[0, : frames * r].float().cpu() - torch.from_numpy(dialogue.mel[: frames * r])).abs().max()
    )
    if isinstance(model, TokenDuplexModel):  # the speaking flag follows from the same tokens
        return float(mel_dev)
    speaking = out.speaking[0, :frames].float().cpu()
    speaking_dev = (speaking - torch.from_numpy(dialogue.speaking[:frames])).abs().max()
    return float(max(mel_dev, speaking_dev))


def markdown_table(result: dict) -> str:
    def ms(value):
        return "n/a" if value is None else f"{value * 1000:.0f} ms"

    def num(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = ["| metric | from speaking probability | from output energy |", "| --- | --- | --- |"]
    p, e = result["duplex"]["probability"], result["duplex"]["energy"]
    for label, key in (
        ("response latency", "response_latency_s"),
        ("barge-in stop latency", "barge_in_stop_latency_s"),
    ):
        for stat in ("mean", "p50", "p90"):
            rows.append(f"| {label} {stat} | {ms(p[key][stat])} | {ms(e[key][stat])} |")

    def with_interval(figures, key, interval_key=None):
        """The rate and its 95% interval (a metrics.json before 2026-12-05 has none)."""
        if interval_key is None:
            interval = (figures.get("intervals") or {}).get(key)
        else:
            interval = figures.get(interval_key)
        return num(figures[key]) + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")

    for label, key in (
        ("missed response rate [95% interval]", "missed_response_rate"),
        ("ignored barge-in rate [95% interval]", "ignored_barge_in_rate"),
        ("barge-ins stopped within 300 ms [95% interval]", "barge_ins_stopped_within_300ms"),
        ("false take-overs per pause [95% interval]", "false_takeovers_per_pause"),
        ("talk-overs per user turn", "talk_overs_per_turn"),
    ):
        if key in p:  # a metrics.json before 2026-12-05 has no barge-ins stopped within 300 ms
            rows.append(f"| {label} | {with_interval(p, key)} | {with_interval(e, key)} |")

    def span(bucket, digits):
        start = f"{bucket['from_s']:.{digits}f}"
        return f"{start}+" if bucket["to_s"] is None else f"{start}-{bucket['to_s']:.{digits}f}"

    # (a metrics.json written before 2026-12-04 has no buckets: a model card still renders it)
    for key, label, digits, cell in (
        (
            "missed_by_turn_end", "missed, turns ending {} s into the dialogue", 0,
            lambda b: f"{b['missed']} / {b['turns']} ({num(b['missed_rate'])})",
        ),
        (
            "missed_by_reply_window", "missed, turns leaving {} s until the user speaks again", 1,
            lambda b: f"{b['missed']} / {b['turns']} ({num(b['missed_rate'])})",
        ),
        (
            "takeovers_by_pause_length", "take-overs in pauses of {} s (onset into the pause p50)", 2,
            lambda b: f"{b['takeovers']} / {b['pauses']} ({num(b['takeover_rate'])}; "
            f"{ms(b['onset_into_pause_p50_s'])})",
        ),
    ):  # fmt: skip
        for bucket_p, bucket_e in zip(p.get(key, []), e.get(key, []), strict=True):
            rows.append(f"| {label.format(span(bucket_p, digits))} | {cell(bucket_p)} | {cell(bucket_e)} |")
    rows.append(f"| turns / barge-ins / pauses | {p['turns']} / {p['barge_ins']} / {p['pauses']} | |")
    state = result.get("turn_end_state")  # model v2 from 2026-12-05
    if state:
        rows.append(
            f"| user-state head at silence onsets: ROC AUC turn ends vs pauses "
            f"({state['turn_ends']} / {state['pauses']}) | {num(state['auc'])} | |"
        )
    rows += by_voice_rows(result.get("by_user_voice") or {})
    words = result.get("content")
    if words and words.get("model"):
        m, r = words["model"], words["reference"]
        rows += [
            "",
            "| what it said (recognizer) | model output | reference channel (ceiling) |",
            "| --- | --- | --- |",
            f"| reply exact match ({m['complete']} complete replies) [95% interval] | "
            f"{with_interval(m, 'exact_match_rate', 'exact_match_interval')} | "
            f"{with_interval(r, 'exact_match_rate', 'exact_match_interval')} |",
            f"| word error rate | {num(m['word_error_rate'])} | {num(r['word_error_rate'])} |",
            f"| substitutions / deletions / insertions | {m['substitutions']} / {m['deletions']} / "
            f"{m['insertions']} | {r['substitutions']} / {r['deletions']} / {r['insertions']} |",
            f"| replies with no word recognized | {m['without_words']} | {r['without_words']} |",
            f"| cut-off replies: only right words ({m['cut_off']}) | {num(m['cut_off_prefix_rate'])} | "
            f"{num(r['cut_off_prefix_rate'])} |",
        ]
        t = words.get("tokens")
        if t:
            rows += [
                "",
                "| what it chose to say (its sampled tokens, before mel and vocoder) | model tokens |",
                "| --- | --- |",
                f"| reply exact match ({t['complete']} complete replies) [95% interval] | "
                f"{with_interval(t, 'exact_match_rate', 'exact_match_interval')} |",
                f"| word error rate | {num(t['word_error_rate'])} |",
                f"| substitutions / deletions / insertions | {t['substitutions']} / {t['deletions']} / "
                f"{t['insertions']} |",
                f"| replies without a word token | {t['without_words']} |",
                f"| cut-off replies: only right words ({t['cut_off']}) | {num(t['cut_off_prefix_rate'])} |",
            ]
    c, q = result["compute"], result["quality"]
    rows += [
        "",
        "| compute / quality | value |",
        "| --- | --- |",
        f"| device / precision | {c['device']} / {c['precision']} |",
        f"| streaming engine / attention backend | {c.get('engine', 'packed')} / "
        f"{c.get('attention_backend', '-')} |",
        f"| chunk | {c['chunk_ms']:.0f} ms x {c['streams']} streams |",
        f"| step latency p50 / p95 / p99 | {c['step_ms_p50']:.1f} / {c['step_ms_p95']:.1f} / "
        f"{c['step_ms_p99']:.1f} ms |",
        f"| real-time factor | {c['real_time_factor']:.3f} |",
        f"| attention history | {_history_text(c)} |",
        f"| mel L1 vs reference | {num(q['mel_l1'])} nats |",
        f"| MCD (mel cepstra 1-24, 5 ms frames, DTW) | {num(q['mcd_db'], 2)} dB |",
        f"| streaming vs offline max deviation | {result['streaming_vs_offline_max_abs']:.2e} |",
        f"| dialogues | {result['dialogues']} |",
    ]
    sampled = result.get("sampling")
    if sampled:
        rows.append(
            f"| sampling | temperature {sampled['temperature']}, top-k {sampled['top_k']}, biases PAD "
            f"{sampled['pad_bias']} / BOS {sampled['bos_bias']} / EOS {sampled['eos_bias']}, state gain "
            f"{sampled['state_gain']:g} ({sampled['state_gain_source']}), greedy words "
            f"{sampled['greedy_words']}, onset temperature {sampled.get('onset_temperature')}, onset "
            f"quantile {sampled.get('onset_quantile') or 'none (drawn)'} "
            f"({sampled.get('onset_quantile_source', 'given')}), stop gain "
            f"{sampled.get('stop_gain', 0.0):g} |"
        )
    rows += failure_rows(result.get("events") or [])  # (absent from a metrics.json before 2026-12-05)
    return "\n".join(rows) + "\n"


def write_examples(
    out_dir: Path, dialogues: list[StreamedDialogue], count: int, config: DuplexConfig
) -> list[Path]:
    """Stereo wav (user | model) and a PNG (user, reference, model spectrograms with events)."""
    written = []
    front_end = LogMel()
    for dialogue in dialogues[:count]:
        samples = min(len(dialogue.user), len(dialogue.audio))
        wav = save_audio(
            out_dir / f"{dialogue.name}_user_model.wav",
            np.stack([dialogue.user[:samples], dialogue.audio[:samples]]),
            config.sample_rate,
        )
        mels = [
            front_end(torch.from_numpy(x)[None])[0].numpy() for x in (dialogue.user, dialogue.reference)
        ] + [dialogue.mel]
        frame_seconds = config.frame_samples / config.sample_rate
        speaking = Curve(np.arange(len(dialogue.speaking)) * frame_seconds, dialogue.speaking, "P(speaking)")
        marks = []
        if dialogue.manifest is not None:
            events = metrics.events_from_manifest(dialogue.manifest)
            marks = [
                Marks(list(events.turn_ends), "white", "k", style="--", width=0.8),
                Marks(list(events.barge_ins), "red", "red"),
            ]
        png = save_dialogue_figure(
            out_dir / f"{dialogue.name}.png",
            mels,
            ("user", "reference system", "model (streamed)"),
            [speaking],
            seconds=len(dialogue.user) / config.sample_rate,
            marks=marks,
            strip_label="seconds (dashed: user end of turn, red: barge-in)",
            width=14,
            dpi=70,
        )
        written += [wav, png]
    return written


def evaluate(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path, options: EvalOptions) -> dict:
    """Stream every dialogue of `data_dir` through the checkpoint's model; write and return the report."""
    started = time.perf_counter()
    checkpoint, data_dir, out_dir = Path(checkpoint), Path(data_dir), Path(out_dir)
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist; pass checkpoint=PATH to a .ckpt file or a model "
            "artifact directory (python -m s2s.pretrained export)"
        )
    if (
        checkpoint.is_dir()
        and (checkpoint / "checkpoints").is_dir()
        and not (checkpoint / "config.json").exists()
    ):
        checkpoint = run_checkpoint(checkpoint)  # a training run: the checkpoint it chose
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    pretrained = load_artifact(checkpoint, options.device)
    model = pretrained.model
    provenance = pretrained.provenance
    sampling, gain_source = resolved_sampling(
        options,
        chosen_state_gain(provenance),
        validated_onset_quantile(provenance),
        validated_stop_gain(provenance),
    )
    model = model.to(streaming_dtype(options.precision, options.device))
    config = model.config
    chunk = config.chunk if options.chunk is None else int(options.chunk)
    chunk_seconds = chunk / config.frame_rate
    left_chunks, history_source = resolved_history(
        options, config.left_chunks, chunk_seconds, validated_history(pretrained.provenance)
    )
    dataset = DialogueDataset(data_dir, sample_rate=config.sample_rate, hop=config.hop)
    recognizer = None
    if options.recognizer is not None:
        from s2s.recognizer import load_recognizer

        recognizer = load_recognizer(options.recognizer, device=options.device)
        task = recorded_task(data_dir)
        if task is not None:
            recognizer.check_task(task)
    count = len(dataset) if options.max_dialogues is None else min(len(dataset), options.max_dialogues)
    log.info(
        "streaming %d dialogues of %s through %s (%s parameters, %s, chunk %d, %d streams)",
        count, data_dir, checkpoint, f"{model.parameter_count():,}", options.precision, chunk,
        options.streams,
    )  # fmt: skip
    run = stream_dialogues(
        model, dataset, range(count), chunk, left_chunks, options.streams, progress=options.progress,
        sampling=sampling, engine=options.engine, cuda_graph=options.cuda_graph,
    )  # fmt: skip
    dialogues = run.dialogues
    steps = np.asarray(run.step_seconds)
    device = torch.device(options.device)
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data_dir),
        "dialogues": len(dialogues),
        "sampling": (
            {
                **dataclasses.asdict(sampling),
                "state_gain_source": gain_source,
                "onset_quantile_source": (
                    "as the run was validated" if options.onset_quantile is None else "given"
                ),
            }
            if isinstance(model, TokenDuplexModel)
            else None
        ),
        "duplex": report.turn_taking(dialogues, config, options.window, options.energy_threshold_db),
        "compute": {
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)",
            "precision": options.precision,
            "engine": options.engine + (" (CUDA graph)" if options.cuda_graph else ""),
            "attention_backend": config.attention_backend,
            "chunk_ms": chunk_seconds * 1000,
            "streams": min(options.streams, count),  # streamed at once (not more than there are dialogues)
            "step_ms_p50": float(np.percentile(steps, 50) * 1000),
            "step_ms_p95": float(np.percentile(steps, 95) * 1000),
            "step_ms_p99": float(np.percentile(steps, 99) * 1000),
            "real_time_factor": float(steps.mean() / chunk_seconds),
            "left_chunks": left_chunks,  # None: unlimited
            "history_seconds": None if left_chunks is None else history_of(left_chunks, chunk_seconds),
            "history_source": history_source,
        },
    }
    if recognizer is not None:
        log.info("recognizing the replies of the model and of the reference")
        vocabularies = pretrained.provenance.vocabularies  # model v2's own, from its task record
        words = None if vocabularies is None else vocabularies["system"].words
        result["content"] = report.reply_content(dialogues, config, recognizer, words)
    result["by_user_voice"] = by_user_voice(dialogues, config, options.window, result.get("content"))
    result["events"] = dialogue_events(dialogues, config, options.window)
    result["turn_end_state"] = state_separability(result["events"])
    log.info("scoring audio quality (mel L1, MCD)")
    result["quality"] = report.quality(dialogues, options.mcd_seconds)
    result["streaming_vs_offline_max_abs"] = offline_deviation(model, dialogues[0], chunk, left_chunks)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["files"] = [str(p) for p in write_examples(out_dir, dialogues, options.examples, config)]
    result["wall_seconds"] = time.perf_counter() - started
    _write_atomically(out_dir / "metrics.json", json.dumps(result, indent=1) + "\n")
    _write_atomically(out_dir / "metrics.md", markdown_table(result))
    return result


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _history_text(compute: dict) -> str:
    """'40.0 s (249 chunks before the current one; the run's ...)', or 'unlimited (...)'."""
    left = compute.get("left_chunks")
    source = compute.get("history_source", "the model's")
    if left is None:
        return f"unlimited ({source})"
    return f"{compute['history_seconds']:.1f} s ({left} chunks before the current one; {source})"
