"""Run dialogues through a batched StreamingSession as deployed: the model hears the user chunk by
chunk and reads back its own output. Shared by `stream_eval` and the free-running validation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from s2s.data.audio import audio_as_float
from s2s.data.dataset import Crop, DialogueDataset
from s2s.data.manifest import Manifest
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig
from s2s.streaming.session import StreamingSession
from s2s.streaming.token_session import streaming_session


@dataclass
class StreamedDialogue:
    name: str
    user: np.ndarray  # (samples,) the user channel that was streamed
    reference: np.ndarray  # (samples,) the reference system channel
    mel: np.ndarray  # (frames * r, n_mels) float32: the model's log-mel
    speaking: np.ndarray  # (frames,) float32: the model's speaking probability
    audio: np.ndarray | None  # (frames * frame_samples,) float32 model audio (None without a vocoder)
    feedback: torch.Tensor  # (frames, feedback_dim), model v2: (frames,) tokens: for the offline comparison
    manifest: Manifest | None  # cropped to the streamed span
    sample_rate: int
    state_gain: float | None = None  # the stream's own state gain, when stream_dialogues was given several
    # (frames,) model v2: the user-state head's log-odds of a turn end against a pause (None for v1)
    turn_end_log_odds: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return len(self.user) / self.sample_rate


@dataclass
class StreamRun:
    dialogues: list[StreamedDialogue]
    step_seconds: list[float]  # wall time of each session step (device synchronized)


def crop_manifest(manifest: Manifest, samples: int) -> Manifest:
    """The manifest of the first `samples` of a dialogue: whole exchanges that end inside the crop
    (a turn whose reply falls beyond the crop cannot be scored, so it is left out, not missed)."""
    if samples >= manifest.num_samples:
        return manifest
    ends: dict[int, int] = {}
    for segment in manifest.segments:
        ends[segment.exchange] = max(ends.get(segment.exchange, 0), segment.end_sample)
    kept = tuple(s for s in manifest.segments if ends[s.exchange] <= samples)
    return dataclasses.replace(manifest, num_samples=samples, segments=kept)


def stream_dialogues(
    model: DuplexModel | TokenDuplexModel,
    dataset: DialogueDataset,
    indices: Sequence[int] | None = None,
    chunk: int | None = None,
    left_chunks=...,
    streams: int = 4,
    max_seconds: float | None = None,
    vocoder: bool = True,
    progress: bool = False,
    sampling: SamplingConfig | None = None,
    state_gains: Sequence[float] | None = None,
    engine: str = "static",
    cuda_graph: bool = False,
) -> StreamRun:
    """Stream the dialogues `indices` of `dataset` (all by default), `streams` at a time in one
    session each group, optionally only their first `max_seconds`. Model v2 samples its tokens with
    `sampling`, each dialogue seeded by its index (a run is reproducible whatever `streams` is).
    `state_gains` (model v2): every dialogue is streamed once per gain, in place of
    `sampling.state_gain`, with the same seed (the arms differ only by the gain); the dialogues
    come out gain after gain, each marked with its `state_gain`. `engine` and `cuda_graph` are the
    session's (StreamingSession)."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1 (dialogues streamed at once), got {streams}")
    device = next(model.parameters()).device
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if state_gains is not None and not isinstance(model, TokenDuplexModel):
        raise ValueError("state_gains are a sampling setting of model v2 (TokenDuplexModel), not of v1")
    gains = [None] if state_gains is None else [float(g) for g in state_gains]
    if not gains:
        raise ValueError("state_gains must hold at least one gain (or be None for sampling's own)")
    work = [(index, gain) for gain in gains for index in indices]
    results, step_seconds = [], []
    bar = tqdm(total=len(work), desc="streaming dialogues", unit="dialogue", disable=not progress)
    for first in range(0, len(work), streams):
        group = [index for index, _ in work[first : first + streams]]
        group_gains = [gain for _, gain in work[first : first + streams]]
        items = [_item(dataset, index, max_seconds) for index in group]
        session = _session(
            model, len(items), chunk, left_chunks, vocoder, device, sampling, group,
            None if state_gains is None else group_gains, engine=engine, cuda_graph=cuda_graph,
        )  # fmt: skip
        outputs, seconds = _stream_group(session, [item["user"] for item in items])
        step_seconds += seconds
        for index, gain, item, output in zip(group, group_gains, items, outputs, strict=True):
            manifest = dataset.files[index].manifest
            results.append(
                StreamedDialogue(
                    name=item["name"],
                    user=item["user"].numpy(),
                    reference=item["system"].numpy(),
                    manifest=None if manifest is None else _cropped(manifest, item, dataset.sample_rate),
                    sample_rate=dataset.sample_rate,
                    state_gain=gain,
                    **output,
                )
            )
        bar.update(len(items))
    bar.close()
    return StreamRun(results, step_seconds)


def _session(
    model, batch, chunk, left_chunks, vocoder, device, sampling, indices, state_gains=None, **engine
) -> StreamingSession:
    """The group's session; `engine`: StreamingSession's engine and cuda_graph keywords."""
    return streaming_session(
        model, batch=batch, chunk=chunk, left_chunks=left_chunks, vocoder=vocoder, device=device,
        sampling=sampling, seeds=torch.tensor(list(indices)), state_gains=state_gains, **engine,
    )  # fmt: skip


def _cropped(manifest: Manifest, item: dict, sample_rate: int) -> Manifest:
    """The manifest cut to the streamed samples (counted at the manifest's own rate)."""
    return crop_manifest(manifest, round(len(item["user"]) * manifest.sample_rate / sample_rate))


def _item(dataset: DialogueDataset, index: int, max_seconds: float | None) -> dict:
    length = dataset.files[index].num_samples
    if max_seconds is not None:
        length = min(length, int(max_seconds * dataset.sample_rate))
    item = dataset[Crop(index, 0, length)]
    # a training data module's dataset may carry int16 PCM (data.int16_audio); sessions take float
    return {**item, "user": audio_as_float(item["user"]), "system": audio_as_float(item["system"])}


def _stream_group(session: StreamingSession, users: list[torch.Tensor]) -> tuple[list[dict], list[float]]:
    """Step the session over every stream's audio (short streams go idle); per stream its outputs."""
    if any(not user.is_floating_point() for user in users):  # int16 would be cast unscaled below
        raise TypeError(
            "streamed audio must be float samples in [-1, 1]; int16 PCM: s2s.data.audio.audio_as_float"
        )
    config = session.model.config
    size, device = session.chunk_samples, session.device
    lengths = [user.shape[0] for user in users]
    pieces: list[list[tuple]] = [[] for _ in users]
    step_seconds = []
    for start in range(0, max(lengths), size):
        audio = torch.zeros(len(users), size)
        counts = torch.zeros(len(users), dtype=torch.int64)
        for row, user in enumerate(users):
            piece = user[start : start + size]
            audio[row, : piece.shape[0]] = piece
            counts[row] = piece.shape[0]
        final = torch.tensor([start + size >= n for n in lengths])
        began = time.perf_counter()
        out = session.step(audio.to(device), lengths=counts, final=final)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_seconds.append(time.perf_counter() - began)
        # One copy to the host per output and step (not one per stream), then per-stream slices.
        frames = out.frames.cpu()
        mel, speaking = out.mel.float().cpu(), out.speaking.float().cpu()
        audio_out = None if out.audio is None else out.audio.cpu()
        feedback = out.raw.feedback.cpu()
        log_odds = getattr(out.raw, "turn_end_log_odds", None)
        log_odds = None if log_odds is None else log_odds.cpu()
        for row in range(len(users)):
            n = int(frames[row])
            if n:
                pieces[row].append(
                    (
                        mel[row, : n * config.mel_per_frame],
                        speaking[row, :n],
                        None if audio_out is None else audio_out[row, : n * config.frame_samples],
                        feedback[row, :n],
                        None if log_odds is None else log_odds[row, :n],
                    )
                )
    outputs = []
    for row in range(len(users)):
        mel, speaking, audio, feedback, log_odds = zip(*pieces[row], strict=True)
        outputs.append(
            {
                "mel": torch.cat(mel).numpy(),
                "speaking": torch.cat(speaking).numpy(),
                "audio": None if audio[0] is None else torch.cat(audio).float().numpy(),
                "feedback": torch.cat(feedback),
                "turn_end_log_odds": None if log_odds[0] is None else torch.cat(log_odds).numpy(),
            }
        )
    return outputs, step_seconds
