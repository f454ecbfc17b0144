"""moshi-finetune's data -> an s2s corpus:  python -m s2s.data.moshi_layout SRC DST [--split train]

moshi-finetune (github.com/kyutai-labs/moshi-finetune) trains on stereo wavs with the system (moshi)
on the LEFT channel and the user on the RIGHT, each beside a `<stem>.json` of word timestamps as its
annotate.py writes them:

    {"alignments": [["Hello", [0.52, 0.81], "SPEAKER_MAIN"], ["hi", [1.4, 1.6], "SPEAKER_OTHER"], ...]}

SPEAKER_MAIN is the system; any other label is the user. SRC is a folder of such pairs, or the
`.jsonl` listing them ({"path": "relative/to/the/jsonl.wav", "duration": ...} per line). Each dialogue
is written to `DST/<split>/` as s2s writes its own: the user on channel 0 (samples unchanged), and a
manifest whose segments are each speaker's runs of words (a new segment where the other speaker
talks or after a silence longer than `max_gap`), with the words' times. DST/corpus.json records the
roles and the words (model v2's vocabularies). Whisper's timestamps may overlap or be empty: a word
that starts before the previous word of its speaker ends starts at that end, and a word left with no
duration is dropped (the summary counts them).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from s2s.data.audio import AudioError, audio_info
from s2s.data.channels import ChannelRoles
from s2s.data.imported import claim_split, write_dialogue, write_record
from s2s.data.manifest import SYSTEM, USER, Manifest, ManifestError, Segment, Word

MAIN_SPEAKER = "SPEAKER_MAIN"
MOSHI_ROLES = ChannelRoles(user=1, system=0)  # the system (moshi) left, the user right


class MoshiLayoutError(ValueError):
    """A moshi-finetune file that cannot be converted; the message names it and the fix."""


@dataclass(frozen=True)
class TimedWord:
    """One entry of a moshi-finetune alignments file."""

    text: str
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Conversion:
    out_dir: Path
    split: str
    dialogues: int
    words: int
    dropped_words: int  # no duration left after the overlap fix, or empty text

    def describe(self) -> str:
        return (
            f"{self.dialogues} dialogues ({self.words} words, {self.dropped_words} dropped) written to "
            f"{self.out_dir / self.split}"
        )


def read_alignments(path: str | os.PathLike) -> list[TimedWord]:
    """The words of a moshi-finetune `<stem>.json`, checked entry by entry."""
    path = Path(path)
    if not path.is_file():
        raise MoshiLayoutError(
            f"{path} does not exist: every wav needs its word timestamps beside it (moshi-finetune's "
            "annotate.py writes them)"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MoshiLayoutError(
            f"{path} is not valid JSON ({error}); re-run annotate.py on its wav"
        ) from error
    if not isinstance(record, dict) or not isinstance(record.get("alignments"), list):
        raise MoshiLayoutError(
            f'{path} has no "alignments" list; moshi-finetune\'s format is {{"alignments": '
            "[[word, [start, end], speaker], ...]}"
        )
    words = []
    for index, entry in enumerate(record["alignments"]):
        try:
            text, (start, end), speaker = entry
            words.append(TimedWord(str(text), float(start), float(end), str(speaker)))
        except (TypeError, ValueError) as error:
            raise MoshiLayoutError(
                f"{path}: alignments[{index}] is {entry!r}, not [word, [start, end], speaker]"
            ) from error
    return words


def dialogue_manifest(
    words: list[TimedWord],
    dialogue_id: str,
    sample_rate: int,
    num_samples: int,
    main_speaker: str = MAIN_SPEAKER,
    max_gap: float = 1.0,
) -> tuple[Manifest, int]:
    """The s2s manifest of one dialogue's words, and how many words were dropped."""
    runs: list[tuple[str, list[Word]]] = []
    last_end = {USER: 0, SYSTEM: 0}
    dropped = 0
    for word in sorted(words, key=lambda w: (w.start, w.end)):
        speaker = SYSTEM if word.speaker == main_speaker else USER
        parts = word.text.split()  # a "word" with spaces (rare) shares its time between its parts
        start = max(round(word.start * sample_rate), last_end[speaker])
        end = min(round(word.end * sample_rate), num_samples)
        if not parts or end - start < len(parts):
            dropped += 1
            continue
        edges = np.linspace(start, end, len(parts) + 1).round().astype(int)
        timed = [Word(p, int(a), int(b)) for p, a, b in zip(parts, edges[:-1], edges[1:], strict=True)]
        gap = start - last_end[speaker]
        if not runs or runs[-1][0] != speaker or gap > max_gap * sample_rate:
            runs.append((speaker, []))
        runs[-1][1].extend(timed)
        last_end[speaker] = end
    segments, exchange = [], 0
    for speaker, run in runs:
        if speaker == USER and segments:
            exchange += 1
        segments.append(
            Segment(
                speaker=speaker, kind="turn" if speaker == USER else "reply",
                start_sample=run[0].start_sample, end_sample=run[-1].end_sample,
                text=" ".join(w.text for w in run), exchange=exchange, sample_rate=sample_rate,
                words=tuple(run),
            )
        )  # fmt: skip
    manifest = Manifest(dialogue_id, sample_rate, num_samples, tuple(segments), {"source": "moshi-finetune"})
    return manifest, dropped


def source_wavs(src: Path) -> list[Path]:
    """The wavs a moshi-finetune folder or `.jsonl` names, in a stable order."""
    if src.is_dir():
        wavs = sorted(src.rglob("*.wav"))
        if not wavs:
            raise MoshiLayoutError(f"no .wav files under {src}; SRC is a moshi-finetune folder or its .jsonl")
        return wavs
    if not src.is_file():
        raise MoshiLayoutError(f"{src} does not exist; SRC is a moshi-finetune folder or its .jsonl")
    wavs = []
    for number, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            path = Path(json.loads(line)["path"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise MoshiLayoutError(
                f'{src}:{number} is not {{"path": ..., "duration": ...}}: {line!r}'
            ) from error
        wavs.append(path if path.is_absolute() else src.parent / path)
    return wavs


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    split: str = "train",
    main_speaker: str = MAIN_SPEAKER,
    max_gap: float = 1.0,
) -> Conversion:
    """Convert a moshi-finetune folder (or .jsonl) into `dst/<split>/` and extend `dst/corpus.json`."""
    src, dst = Path(src), Path(dst)
    wavs = source_wavs(src)
    root = src if src.is_dir() else src.parent
    folder = claim_split(dst, split)
    manifests, words, dropped = [], 0, 0
    ids: dict[str, Path] = {}
    for wav in wavs:
        info = audio_info(wav)
        if info.channels != 2:
            raise AudioError(
                f"{wav} has {info.channels} channel(s); moshi-finetune's dialogues are stereo (moshi left, "
                "the user right)"
            )
        relative = wav.relative_to(root) if wav.is_relative_to(root) else Path(wav.name)
        dialogue_id = "-".join(relative.with_suffix("").parts)
        if dialogue_id in ids:
            raise MoshiLayoutError(f"{wav} and {ids[dialogue_id]} would both be dialogue {dialogue_id!r}")
        ids[dialogue_id] = wav
        timed = read_alignments(wav.with_suffix(".json"))
        try:
            manifest, lost = dialogue_manifest(
                timed, dialogue_id, info.samplerate, info.frames, main_speaker, max_gap
            )
        except ManifestError as error:
            raise MoshiLayoutError(f"{wav.with_suffix('.json')}: {error}") from error
        if not manifest.speech(USER):
            labels = sorted({w.speaker for w in timed})
            raise MoshiLayoutError(
                f"{wav.with_suffix('.json')} has no words of the user (speakers {labels}; {main_speaker} is "
                "the system): annotate.py transcribes the left channel only; transcribe the right channel "
                "too and label its words with another speaker name (e.g. SPEAKER_USER), or pass "
                "--main-speaker if the system has another label"
            )
        audio, _ = soundfile.read(str(wav), dtype="float32", always_2d=True)
        write_dialogue(folder, audio[:, MOSHI_ROLES.user], audio[:, MOSHI_ROLES.system], manifest)
        manifests.append(manifest)
        words += sum(len(s.words) for s in manifest.segments)
        dropped += lost
    source = {"format": "moshi-finetune", "path": str(src), "main_speaker": main_speaker, "max_gap": max_gap}
    write_record(dst, split, manifests, source)
    return Conversion(dst, split, len(manifests), words, dropped)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="moshi-finetune folder (wav + json pairs) or its .jsonl")
    parser.add_argument("dst", type=Path, help="the s2s corpus folder (data.root)")
    parser.add_argument("--split", default="train", help="train, val or test (default train)")
    parser.add_argument("--main-speaker", default=MAIN_SPEAKER, help="the system's speaker label")
    parser.add_argument("--max-gap", type=float, default=1.0, help="seconds of silence that end a turn")
    args = parser.parse_args(argv)
    print(convert(args.src, args.dst, args.split, args.main_speaker, args.max_gap).describe())


if __name__ == "__main__":
    main()
