"""Log-mel of every reply window of a split, reference and vocoded, computed once and cached.

The vocoder round trip costs ~30 ms of one core per second of audio (32 Griffin-Lim iterations),
far too slow to redo every epoch, so each window's variants are made once, on all cores, and kept
in `<cache_dir>/<split>-<key>.pt` (plain tensors and lists: it loads with weights_only=True).
The key covers everything that changes the features, so another corpus, log-mel, margin or plan
makes a new file, and a re-run or a second run on the same corpus reuses it.

Each window is stored with `margin` seconds of the system channel on either side, so that training
can move the window's edges (jitter) without recomputing anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from s2s.data.dataset import DialogueDataset
from s2s.data.features import LogMel, LogMelConfig
from s2s.models.vocoder import GriffinLimVocoder
from s2s.recognizer.augment import round_trip, smooth_time
from s2s.recognizer.windows import reply_windows

log = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when a code change alters the cached features for the same key
REFERENCE = "reference"


@dataclass(frozen=True)
class Variant:
    """How a window's system channel reaches the recognizer: as recorded, or through the vocoder."""

    vocoder: bool = False
    smoothing: int = 1  # moving average over this many mel frames before the vocoder
    stream_frames: int | None = None  # vocode chunk by chunk (the streaming session's way)

    @property
    def name(self) -> str:
        if not self.vocoder:
            return REFERENCE
        return (
            "vocoder"
            + (f"-smooth{self.smoothing}" if self.smoothing > 1 else "")
            + (f"-stream{self.stream_frames}" if self.stream_frames else "")
        )


@dataclass(frozen=True)
class VariantPlan:
    """Which variants each window gets: `fixed` ones always, plus `random_copies` drawn per window
    (smoothing from `smoothing`, streamed with probability `streamed_fraction`)."""

    fixed: tuple[Variant, ...] = (Variant(),)
    random_copies: int = 0
    smoothing: tuple[int, ...] = (1, 3, 5)
    streamed_fraction: float = 0.5
    stream_frames: int = 16
    # Vocode only the reply and this many frames around it and keep the reference elsewhere: 2-3x
    # cheaper, and exact where the system channel is silent between replies (synthetic corpora:
    # the vocoder maps digital silence to the same floor). None: vocode the whole span.
    reply_pad: int | None = None

    def draw(self, rng: np.random.Generator) -> list[Variant]:
        drawn = [
            Variant(
                vocoder=True,
                smoothing=int(rng.choice(self.smoothing)),
                stream_frames=self.stream_frames if rng.random() < self.streamed_fraction else None,
            )
            for _ in range(self.random_copies)
        ]
        return list(self.fixed) + drawn

    def record(self) -> dict:
        return {**asdict(self), "fixed": [asdict(v) for v in self.fixed]}


@dataclass
class WindowFeatures:
    """One split's windows, one entry per (window, variant). Frames index the stored span's mel."""

    mels: list[torch.Tensor] = field(default_factory=list)  # (span frames, n_mels) float16
    variants: list[str] = field(default_factory=list)
    words: list[tuple[str, ...]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    dialogues: list[str] = field(default_factory=list)
    exchanges: list[int] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)  # the reply window [start, end) in frames
    replies: list[tuple[int, int]] = field(default_factory=list)  # the reference reply [start, end)

    def __len__(self) -> int:
        return len(self.mels)

    def select(self, keep: Sequence[int]) -> WindowFeatures:
        return WindowFeatures(**{name: [values[i] for i in keep] for name, values in vars(self).items()})

    def where(self, variant: str | None = None, kind: str | None = None) -> WindowFeatures:
        return self.select(
            [
                i for i in range(len(self))
                if variant in (None, self.variants[i]) and kind in (None, self.kinds[i])
            ]
        )  # fmt: skip

    def window_mel(self, i: int) -> torch.Tensor:
        """The exact reply window (no margin) of entry i, float32."""
        start, end = self.windows[i]
        return self.mels[i][start:end].float()

    def to_record(self) -> dict:
        record = {name: list(values) for name, values in vars(self).items()}
        record["words"] = [list(w) for w in self.words]
        record["windows"] = [list(w) for w in self.windows]
        record["replies"] = [list(r) for r in self.replies]
        return record

    @classmethod
    def from_record(cls, record: dict) -> WindowFeatures:
        return cls(
            mels=list(record["mels"]),
            variants=list(record["variants"]),
            words=[tuple(w) for w in record["words"]],
            kinds=list(record["kinds"]),
            dialogues=list(record["dialogues"]),
            exchanges=[int(e) for e in record["exchanges"]],
            windows=[tuple(int(x) for x in w) for w in record["windows"]],
            replies=[tuple(int(x) for x in r) for r in record["replies"]],
        )


def split_features(
    split_dir: str | os.PathLike,
    log_mel: LogMelConfig,
    plan: VariantPlan,
    kinds: tuple[str, ...] = ("reply",),
    margin: float = 0.0,
    seed: int = 0,
    iterations: int = 32,
    workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
    cache_key: dict | None = None,
    progress: bool = True,
) -> WindowFeatures:
    """Features of every window of `kinds` in `split_dir` (from the cache when it has them)."""
    split_dir = Path(split_dir)
    settings = {
        "version": FEATURES_VERSION, "split": split_dir.name, "log_mel": asdict(log_mel),
        "plan": plan.record(), "kinds": list(kinds), "margin": margin, "seed": seed,
        "iterations": iterations, "corpus": cache_key,
    }  # fmt: skip
    path = None
    if cache_dir is not None and cache_key is not None:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{split_dir.name}-{digest}.pt"
        if path.is_file():
            try:
                return WindowFeatures.from_record(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as error:  # a cache is disposable: recompute, never fail on it
                log.warning(f"ignoring unreadable feature cache {path} ({error!r}); recomputing")
    features = _compute(split_dir, log_mel, plan, kinds, margin, seed, iterations, workers, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        torch.save(features.to_record(), partial)
        os.replace(partial, path)
    return features


# --- computing on all cores -------------------------------------------------------------------

_job: dict = {}


def _start_worker(job: dict) -> None:
    torch.set_num_threads(1)  # one dialogue per core; Griffin-Lim is several times slower on 2 threads
    _job.update(job)
    _job["dataset"] = DialogueDataset(job["split_dir"], sample_rate=job["log_mel"].sample_rate)
    _job["front"] = LogMel(job["log_mel"])
    _job["vocoder"] = GriffinLimVocoder(job["log_mel"], iterations=job["iterations"])


def _compute(split_dir, log_mel, plan, kinds, margin, seed, iterations, workers, progress) -> WindowFeatures:
    dataset = DialogueDataset(split_dir, sample_rate=log_mel.sample_rate)
    if any(f.manifest is None for f in dataset.files):
        missing = next(f for f in dataset.files if f.manifest is None)
        raise FileNotFoundError(
            f"{missing.audio_path} has no manifest ({missing.audio_path.with_suffix('.json')}); the "
            "recognizer needs the words of each reply: use a corpus made by `python scripts/make_data.py`"
        )
    job = {"split_dir": str(split_dir), "log_mel": log_mel, "plan": plan, "kinds": kinds, "margin": margin,
           "seed": seed, "iterations": iterations}  # fmt: skip
    indices = list(range(len(dataset)))
    workers = max(1, min(workers, len(indices)))
    from tqdm.auto import tqdm

    results = [None] * len(indices)
    bar = tqdm(
        total=len(indices), desc=f"features {Path(split_dir).name}", unit="dialogue", disable=not progress
    )
    try:
        if workers == 1:
            threads = torch.get_num_threads()
            _start_worker(job)
            try:
                for i in indices:
                    results[i] = _dialogue(i)
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
        else:
            context = multiprocessing.get_context("fork")
            with context.Pool(workers, initializer=_start_worker, initargs=(job,)) as pool:
                for i, result in pool.imap_unordered(_indexed_dialogue, indices):
                    results[i] = result
                    bar.update(1)
    finally:
        bar.close()
    features = WindowFeatures()
    for entries in results:
        for entry in entries:
            for name, value in entry.items():
                getattr(features, name).append(torch.from_numpy(value) if name == "mels" else value)
    return features


def _indexed_dialogue(index: int) -> tuple[int, list[dict]]:
    return index, _dialogue(index)


def _dialogue(index: int) -> list[dict]:
    """All windows of one dialogue, every planned variant of each (numpy float16 mel)."""
    dataset: DialogueDataset = _job["dataset"]
    log_mel: LogMelConfig = _job["log_mel"]
    file = dataset.files[index]
    rng = np.random.default_rng([_job["seed"], index])
    system = dataset[index]["system"]
    scale = dataset.sample_rate / file.manifest.sample_rate
    rate = dataset.sample_rate
    hop, margin = log_mel.hop, round(_job["margin"] * dataset.sample_rate)
    entries = []
    for window in reply_windows(file.manifest):
        variants = _job["plan"].draw(rng)  # drawn for every window, so a kind filter keeps the draws stable
        if window.kind not in _job["kinds"]:
            continue
        start, end = round(window.start_sample * scale), round(window.end_sample * scale)
        first, last = max(0, start - margin), min(system.shape[0], end + margin)
        first = start - (start - first) // hop * hop  # the window's edges fall on frame edges of the span
        reference = _job["front"](system[None, first:last])
        span = {
            "words": window.words, "kinds": window.kind, "dialogues": window.dialogue_id,
            "exchanges": window.exchange,
            "windows": ((start - first) // hop, (start - first) // hop + (end - start) // hop),
            "replies": tuple(_frame(t, rate, first, hop) for t in (window.reply_start, window.reply_end)),
        }  # fmt: skip
        for variant in variants:
            mel = reference if not variant.vocoder else _vocoded(reference, variant, span["replies"])
            entries.append({"mels": mel[0].to(torch.float16).numpy(), "variants": variant.name, **span})
    return entries


def _frame(seconds: float, rate: int, first: int, hop: int) -> int:
    """The span frame in which a time (seconds) falls."""
    return round((seconds * rate - first) / hop)


def _vocoded(reference: torch.Tensor, variant: Variant, reply: tuple[int, int]) -> torch.Tensor:
    pad = _job["plan"].reply_pad
    first, last = (0, reference.shape[1]) if pad is None else (max(0, reply[0] - pad), reply[1] + pad)
    mel = smooth_time(reference[:, first:last], variant.smoothing)
    out = reference.clone()
    out[:, first:last] = round_trip(mel, _job["vocoder"], _job["front"], variant.stream_frames)
    return out
