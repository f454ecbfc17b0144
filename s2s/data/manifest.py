"""The JSON manifest beside each dialogue wav: who speaks when, what, and what kind of event it is.

Times are given twice: in seconds (for people) and in samples (exact, for code). Kinds:
  user   "turn"          a complete user request (may contain pauses)
  user   "pause"         silence inside a turn: not an end of turn
  user   "barge-in"      the user interrupts the system ("stop", "wait")
  system "reply"         a complete system answer
  system "cut-off reply" an answer the system stopped after a barge-in; `end` is where it fell silent
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "s2s-dialogue/1"
USER, SYSTEM = "user", "system"
KINDS = {USER: ("turn", "pause", "barge-in"), SYSTEM: ("reply", "cut-off reply")}
SPEECH_KINDS = {USER: ("turn", "barge-in"), SYSTEM: ("reply", "cut-off reply")}


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, or disagrees with its audio."""


@dataclass(frozen=True)
class Segment:
    speaker: str
    kind: str
    start_sample: int
    end_sample: int
    text: str
    exchange: int
    sample_rate: int = field(repr=False)

    def __post_init__(self):
        if self.speaker not in KINDS or self.kind not in KINDS[self.speaker]:
            raise ManifestError(
                f"segment kind {self.kind!r} for speaker {self.speaker!r} is not one of {KINDS}"
            )
        if not 0 <= self.start_sample < self.end_sample:
            raise ManifestError(
                f"segment {self.kind!r} has start {self.start_sample} >= end {self.end_sample}"
            )

    @property
    def start(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end(self) -> float:
        return self.end_sample / self.sample_rate

    @property
    def is_speech(self) -> bool:
        return self.kind in SPEECH_KINDS[self.speaker]

    def to_json(self) -> dict:
        record = asdict(self)
        del record["sample_rate"]
        return {"start": round(self.start, 4), "end": round(self.end, 4), **record}


@dataclass(frozen=True)
class Manifest:
    dialogue_id: str
    sample_rate: int
    num_samples: int
    segments: tuple[Segment, ...]
    info: dict = field(default_factory=dict)  # split, seed, task, voices: descriptive only

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def speech(self, speaker: str) -> list[Segment]:
        """The segments in which `speaker` is audible (pauses excluded)."""
        return [s for s in self.segments if s.speaker == speaker and s.is_speech]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "id": self.dialogue_id,
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples,
            "duration": round(self.duration, 4),
            "channels": [USER, SYSTEM],
            **self.info,
            "segments": [s.to_json() for s in self.segments],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (beside the target, then rename): a reader never sees half a manifest."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(partial, path)
        return path


def load_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ManifestError(f"manifest {path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"manifest {path} is not valid JSON ({error}); re-generate the corpus") from error
    if not isinstance(record, dict):
        raise ManifestError(
            f"manifest {path} holds a JSON {type(record).__name__}, not a dialogue manifest (an object with "
            f'"format": "{FORMAT}"); re-generate the corpus, or remove it to use the wav without labels'
        )
    if record.get("format") != FORMAT:
        raise ManifestError(f"manifest {path} has format {record.get('format')!r}, expected {FORMAT!r}")
    try:
        rate = int(record["sample_rate"])
        segments = tuple(
            Segment(
                speaker=s["speaker"],
                kind=s["kind"],
                start_sample=int(s["start_sample"]),
                end_sample=int(s["end_sample"]),
                text=s["text"],
                exchange=int(s["exchange"]),
                sample_rate=rate,
            )
            for s in record["segments"]
        )
        known = {"format", "id", "sample_rate", "num_samples", "duration", "channels", "segments"}
        return Manifest(
            dialogue_id=record["id"],
            sample_rate=rate,
            num_samples=int(record["num_samples"]),
            segments=segments,
            info={k: v for k, v in record.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"manifest {path} is malformed: {error!r}") from error
