"""Streaming evaluation: run test dialogues through a batched StreamingSession as in real time and
score what a full-duplex system is judged by (s2s.streaming.metrics), plus compute and quality."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2s.data.audio import save_audio
from s2s.data.dataset import DialogueDataset
from s2s.data.features import LogMel
from s2s.data.manifest import Manifest
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.plots import Curve, Marks, save_dialogue_figure
from s2s.streaming import metrics
from s2s.streaming.session import StreamingSession
from s2s.training.checkpoints import load_checkpoint


@dataclass
class StreamedDialogue:
    name: str
    user: np.ndarray  # (samples,)
    reference: np.ndarray  # (samples,) system channel
    mel: np.ndarray  # (frames * r, n_mels) model log-mel
    speaking: np.ndarray  # (frames,) model probability
    audio: np.ndarray  # (frames * frame_samples,) model audio
    feedback: torch.Tensor  # (frames, feedback_dim) for the offline comparison
    manifest: Manifest | None


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> DuplexModel:
    """A DuplexModel from a training checkpoint (its config is in the checkpoint's hyperparameters)."""
    state = load_checkpoint(checkpoint)  # loaded once, with the corrupt-file checks
    config = DuplexConfig.from_dict(state["hyper_parameters"]["model"])
    model = DuplexModel(config)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(weights)
    return model.to(device).eval()


def stream_dataset(
    model: DuplexModel,
    dataset: DialogueDataset,
    chunk: int,
    left_chunks,
    streams: int,
    max_dialogues: int | None = None,
) -> tuple[list[StreamedDialogue], list[float]]:
    """Stream every dialogue, `streams` at a time in one session; returns them and per-step seconds."""
    device = next(model.parameters()).device
    count = len(dataset) if max_dialogues is None else min(len(dataset), max_dialogues)
    results, step_seconds = [], []
    for first in range(0, count, streams):
        items = [dataset[i] for i in range(first, min(first + streams, count))]
        session = StreamingSession(
            model, batch=len(items), chunk=chunk, left_chunks=left_chunks, device=device
        )
        size = session.chunk_samples
        lengths = [item["user"].shape[0] for item in items]
        pieces = [[] for _ in items]
        for start in range(0, max(lengths), size):
            audio = torch.zeros(len(items), size)
            counts = torch.zeros(len(items), dtype=torch.int64)
            for row, item in enumerate(items):
                piece = item["user"][start : start + size]
                audio[row, : piece.shape[0]] = piece
                counts[row] = piece.shape[0]
            final = torch.tensor([start + size >= n for n in lengths])
            began = time.perf_counter()
            out = session.step(audio.to(device), lengths=counts, final=final)
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - began)
            for row in range(len(items)):
                frames = int(out.frames[row])
                if frames:
                    pieces[row].append(
                        (
                            out.mel[row, : frames * model.config.mel_per_frame].cpu(),
                            out.speaking[row, :frames].cpu(),
                            out.audio[row, : frames * model.config.frame_samples].cpu(),
                            out.raw.feedback[row, :frames].cpu(),
                        )
                    )
        for row, item in enumerate(items):
            parts = list(zip(*pieces[row], strict=True))
            index = first + row
            results.append(
                StreamedDialogue(
                    name=item["name"],
                    user=item["user"].numpy(),
                    reference=item["system"].numpy(),
                    mel=torch.cat(parts[0]).numpy(),
                    speaking=torch.cat(parts[1]).numpy(),
                    audio=torch.cat(parts[2]).numpy(),
                    feedback=torch.cat(parts[3]),
                    manifest=dataset.files[index].manifest,
                )
            )
    return results, step_seconds


def events_from_manifest(manifest: Manifest) -> metrics.EventTimes:
    user = sorted((s for s in manifest.segments if s.speaker == "user"), key=lambda s: s.start)
    speech_starts = [s.start for s in user if s.kind in ("turn", "barge-in")]
    turn_ends, next_starts = [], []
    for turn in (s for s in user if s.kind == "turn"):
        turn_ends.append(turn.end)
        later = [t for t in speech_starts if t > turn.end]
        next_starts.append(later[0] if later else float("inf"))
    return metrics.EventTimes(
        turn_ends=turn_ends,
        next_user_starts=next_starts,
        barge_ins=[s.start for s in user if s.kind == "barge-in"],
        pauses=[(s.start, s.end) for s in user if s.kind == "pause"],
    )


def duplex_report(
    dialogues: list[StreamedDialogue], config: DuplexConfig, energy_db: float, window: float
) -> dict:
    """Turn-taking scores, read from the speaking probability and from the output audio's energy."""
    frame_seconds = config.frame_samples / config.sample_rate
    report = {}
    for source in ("probability", "energy"):
        totals = metrics.DuplexScores([], 0, [], 0, 0, 0, 0)
        for dialogue in dialogues:
            if dialogue.manifest is None:
                continue
            if source == "probability":
                active = metrics.activity_from_probability(dialogue.speaking)
            else:
                active = metrics.activity_from_energy(dialogue.audio, config.frame_samples, energy_db)
            scores = metrics.score_dialogue(
                active, frame_seconds, events_from_manifest(dialogue.manifest), window
            )
            totals.response_latencies += scores.response_latencies
            totals.missed_responses += scores.missed_responses
            totals.barge_in_stop_latencies += scores.barge_in_stop_latencies
            totals.ignored_barge_ins += scores.ignored_barge_ins
            totals.barge_ins_while_silent += scores.barge_ins_while_silent
            totals.false_takeovers += scores.false_takeovers
            totals.pauses += scores.pauses
        barge_ins = len(totals.barge_in_stop_latencies) + totals.ignored_barge_ins
        report[source] = {
            "response_latency_s": metrics.summarize(totals.response_latencies),
            "missed_response_rate": totals.missed_responses / max(1, totals.turns),
            "barge_in_stop_latency_s": metrics.summarize(totals.barge_in_stop_latencies),
            "ignored_barge_in_rate": totals.ignored_barge_ins / max(1, barge_ins),
            "barge_ins_while_silent": totals.barge_ins_while_silent,
            "false_takeovers_per_pause": totals.false_takeovers / max(1, totals.pauses),
            "turns": totals.turns,
            "barge_ins": barge_ins + totals.barge_ins_while_silent,
            "pauses": totals.pauses,
        }
    return report


def quality_report(dialogues: list[StreamedDialogue], mcd_seconds: float) -> dict:
    front_end = LogMel()
    l1, mcd = [], []
    for dialogue in dialogues:
        reference = front_end(torch.from_numpy(dialogue.reference)[None])[0].numpy()
        frames = min(len(reference), len(dialogue.mel))
        l1.append(float(np.abs(reference[:frames] - dialogue.mel[:frames]).mean()))
        limit = min(frames, int(mcd_seconds * 100))
        mcd.append(metrics.mel_cepstral_distortion(reference[:limit], dialogue.mel[:limit], pool=4))
    return {
        "mel_l1": float(np.mean(l1)),
        "mcd_db": float(np.nanmean(mcd)),
        "mcd_seconds_per_dialogue": mcd_seconds,
        "mcd_frame_ms": 40,
    }


def offline_deviation(model: DuplexModel, dialogue: StreamedDialogue, chunk: int, left_chunks) -> float:
    """Max |streamed - offline| over the mel and speaking outputs of one dialogue."""
    device = next(model.parameters()).device
    user = torch.from_numpy(dialogue.user)[None].to(device)
    with torch.no_grad():
        mel = LogMel().to(device)(user)
        out = model(mel, dialogue.feedback[None].to(device), chunk=chunk, left_chunks=left_chunks)
    frames = min(out.speaking.shape[1], len(dialogue.speaking))
    r = model.config.mel_per_frame
    mel_dev = (out.mel[0, : frames * r].cpu() - torch.from_numpy(dialogue.mel[: frames * r])).abs().max()
    speaking_dev = (out.speaking[0, :frames].cpu() - torch.from_numpy(dialogue.speaking[:frames])).abs().max()
    return float(max(mel_dev, speaking_dev))


def markdown_table(report: dict) -> str:
    def fmt(value, scale=1.0, unit=""):
        return "n/a" if value is None else f"{value * scale:.0f}{unit}" if unit == " ms" else f"{value:.3f}"

    rows = ["| metric | from speaking probability | from output energy |", "| --- | --- | --- |"]
    p, e = report["duplex"]["probability"], report["duplex"]["energy"]
    for label, key in (
        ("response latency", "response_latency_s"),
        ("barge-in stop latency", "barge_in_stop_latency_s"),
    ):
        for stat in ("mean", "p50", "p90"):
            rows.append(
                f"| {label} {stat} | {fmt(p[key][stat], 1000, ' ms')} | {fmt(e[key][stat], 1000, ' ms')} |"
            )
    for label, key in (
        ("missed response rate", "missed_response_rate"),
        ("ignored barge-in rate", "ignored_barge_in_rate"),
        ("false take-overs per pause", "false_takeovers_per_pause"),
    ):
        rows.append(f"| {label} | {p[key]:.3f} | {e[key]:.3f} |")
    c, q = report["compute"], report["quality"]
    rows += [
        "",
        "| compute / quality | value |",
        "| --- | --- |",
        f"| device | {c['device']} |",
        f"| chunk | {c['chunk_ms']:.0f} ms x {c['streams']} streams |",
        f"| step latency p50 / p95 / p99 | {c['step_ms_p50']:.1f} / {c['step_ms_p95']:.1f} / "
        f"{c['step_ms_p99']:.1f} ms |",
        f"| real-time factor | {c['real_time_factor']:.3f} |",
        f"| mel L1 vs reference | {q['mel_l1']:.3f} nats |",
        f"| mel cepstral distortion (DTW, 40 ms frames) | {q['mcd_db']:.2f} dB |",
        f"| streaming vs offline max deviation | {report['streaming_vs_offline_max_abs']:.2e} |",
        f"| dialogues | {report['dialogues']} |",
    ]
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
            events = events_from_manifest(dialogue.manifest)
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


def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    chunk: int | None = None,
    left_chunks=...,
    streams: int = 4,
    max_dialogues: int | None = None,
    device: str = "cpu",
    energy_threshold_db: float = -40.0,
    window: float = 3.0,
    mcd_seconds: float = 20.0,
    examples: int = 3,
) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_model(checkpoint, device)
    config = model.config
    chunk = config.chunk if chunk is None else int(chunk)
    left_chunks = config.left_chunks if left_chunks is ... else left_chunks
    dataset = DialogueDataset(data_dir, sample_rate=config.sample_rate, hop=config.hop)
    dialogues, step_seconds = stream_dataset(model, dataset, chunk, left_chunks, streams, max_dialogues)
    chunk_seconds = chunk * config.frame_samples / config.sample_rate
    steps = np.asarray(step_seconds)
    report = {
        "checkpoint": str(checkpoint),
        "data": str(data_dir),
        "dialogues": len(dialogues),
        "duplex": duplex_report(dialogues, config, energy_threshold_db, window),
        "compute": {
            "device": torch.cuda.get_device_name()
            if torch.device(device).type == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)",
            "chunk_ms": chunk_seconds * 1000,
            "streams": streams,
            "step_ms_p50": float(np.percentile(steps, 50) * 1000),
            "step_ms_p95": float(np.percentile(steps, 95) * 1000),
            "step_ms_p99": float(np.percentile(steps, 99) * 1000),
            "real_time_factor": float(steps.mean() / chunk_seconds),
        },
        "quality": quality_report(dialogues, mcd_seconds),
        "streaming_vs_offline_max_abs": offline_deviation(model, dialogues[0], chunk, left_chunks),
    }
    report["files"] = [str(p) for p in write_examples(out_dir, dialogues, examples, config)]
    report["wall_seconds"] = time.perf_counter() - started
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "metrics.md").write_text(markdown_table(report))
    return report
