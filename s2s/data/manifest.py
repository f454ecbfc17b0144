"""The JSON manifest beside each dialogue wav: who speaks when, what, and what kind of event it is.

Times are given twice: in seconds (for people) and in samples (exact, for code). Kinds:
  user   "turn"          a complete user request (may contain pauses)
  user   "pause"         silence inside a turn: not an end of turn
  user   "barge-in"      the user interrupts the system ("stop", "wait")
  system "reply"         a complete system answer
  system "cut-off reply" an answer the system stopped after a barge-in; `end` is where it fell silent

Format 2 adds word times: every segment lists the words spoken in it, each with its start and end
(the next word's start, or where the phrase's audio ends). A cut-off reply lists only the words it
got to say (its `text` stays the whole planned answer). Format 1 manifests (no word times) still
load, with `words` None, and users of word times fall back to segment-level approximations.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "s2s-dialogue/2"
FORMAT_WITHOUT_WORDS = "s2s-dialogue/1"
USER, SYSTEM = "user", "system"
KINDS = {USER: ("turn", "pause", "barge-in"), SYSTEM: ("reply", "cut-off reply")}
SPEECH_KINDS = {USER: ("turn", "barge-in"), SYSTEM: ("reply", "cut-off reply")}


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, or disagrees with its audio."""


@dataclass(frozen=True)
class Word:
    """One spoken word and the samples [start, end) it spans on the dialogue timeline."""

    text: str
    start_sample: int
    end_sample: int

    def to_json(self, sample_rate: int) -> dict:
        return {
            "text": self.text,
            "start": round(self.start_sample / sample_rate, 4),
            "end": round(self.end_sample / sample_rate, 4),
            "start_sample": self.start_sample,
            "end_sample": self.end_sample,
        }


@dataclass(frozen=True)
class Segment:
    speaker: str
    kind: str
    start_sample: int
    end_sample: int
    text: str
    exchange: int
    sample_rate: int = field(repr=False)
    words: tuple[Word, ...] | None = field(default=None, repr=False)  # None: no word times (format 1)

    def __post_init__(self):
        if self.speaker not in KINDS or self.kind not in KINDS[self.speaker]:
            raise ManifestError(
                f"segment kind {self.kind!r} for speaker {self.speaker!r} is not one of {KINDS}"
            )
        if not 0 <= self.start_sample < self.end_sample:
            raise ManifestError(
                f"segment {self.kind!r} has start {self.start_sample} >= end {self.end_sample}"
            )
        if self.words is not None:
            object.__setattr__(self, "words", tuple(self.words))
            self._check_words()

    def _check_words(self) -> None:
        """Words lie inside the segment, in order, without overlap, and are the segment's text."""
        where = f"{self.kind!r} segment at sample {self.start_sample}"
        said = [w.text for w in self.words]
        planned = self.text.split()
        expected = planned[: len(said)] if self.kind == "cut-off reply" else planned
        if said != expected or (self.is_speech and not said):
            raise ManifestError(f"{where}: its words {said} are not its text {self.text!r}")
        edge = self.start_sample
        for word in self.words:
            if not edge <= word.start_sample < word.end_sample <= self.end_sample:
                raise ManifestError(
                    f"{where}: word {word.text!r} spans samples {word.start_sample}-{word.end_sample}, "
                    f"outside the segment ({self.start_sample}-{self.end_sample}) or before the word ahead"
                )
            edge = word.end_sample

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
        del record["sample_rate"], record["words"]
        if self.words is not None:
            record["words"] = [w.to_json(self.sample_rate) for w in self.words]
        return {"start": round(self.start, 4), "end": round(self.end, 4), **record}


@dataclass(frozen=True)
class Manifest:
    dialogue_id: str
    sample_rate: int
    num_samples: int
    segments: tuple[Segment, ...]
    info: dict = field(default_factory=dict)  # split, seed, task, voices: descriptive only

    def __post_init__(self):
        timed = {s.words is not None for s in self.segments}
        if len(timed) > 1:
            raise ManifestError(
                f"dialogue {self.dialogue_id}: some segments have word times and some do not; "
                "a manifest has them everywhere (format 2) or nowhere (format 1)"
            )

    @property
    def has_word_times(self) -> bool:
        """Whether the segments carry word times (format 2), or only segment times (format 1)."""
        return all(s.words is not None for s in self.segments)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def speech(self, speaker: str) -> list[Segment]:
        """The segments in which `speaker` is audible (pauses excluded)."""
        return [s for s in self.segments if s.speaker == speaker and s.is_speech]

    def to_json(self) -> dict:
        return {
            "format": FORMAT if self.has_word_times else FORMAT_WITHOUT_WORDS,
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
    if record.get("format") not in (FORMAT, FORMAT_WITHOUT_WORDS):
        raise ManifestError(
            f"manifest {path} has format {record.get('format')!r}, expected {FORMAT!r} "
            f"(or {FORMAT_WITHOUT_WORDS!r}, without word times)"
            + (
                "; it holds moshi-finetune's word timestamps: convert that folder with "
                "`python -m s2s.data.moshi_layout SRC DST`"
                if "alignments" in record
                else ""
            )
        )
    if record.get("channels", [USER, SYSTEM]) != [USER, SYSTEM]:
        raise ManifestError(
            f"manifest {path} records channels {record.get('channels')!r}; an s2s dialogue has the user on "
            f"channel 0 and the system on channel 1 ({[USER, SYSTEM]!r}): re-write the wav in that order"
        )
    timed = record["format"] == FORMAT
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
                words=_words(s["words"]) if timed else None,
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


def _words(records: list) -> tuple[Word, ...]:
    return tuple(Word(w["text"], int(w["start_sample"]), int(w["end_sample"])) for w in records)
