"""Writing an s2s corpus made from another format (moshi-finetune's folders, Lhotse cuts).

What the converters share: a dialogue is written as s2s writes its own (a stereo wav, the user on
channel 0, then its manifest, which marks it done), without changing a sample; and `corpus.json`
records the roles and a task whose words are the corpus's own, so model v2 builds its token
vocabularies from it as from a synthetic corpus. Converting a second split into the same folder adds
its new words at the end of each vocabulary: the ids of the first split's words do not move.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile

from s2s.data.corpus import RECORD_FORMAT, RECORD_NAME, CorpusError, read_record
from s2s.data.dataset import AUDIO_SUFFIXES
from s2s.data.manifest import SYSTEM, USER, Manifest

TASK_CLASS = "Transcripts"  # a task record that names its words (s2s/data/words.py reads them)


def save_exact(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write (channels, samples) float audio as wav, atomically, without changing a sample: 16-bit PCM
    when every sample is a 16-bit value (what s2s writes and most recordings hold), else 24-bit, else
    32-bit float."""
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2 or not np.isfinite(audio).all():
        raise ValueError(
            f"refusing to write {path}: audio must be finite (channels, samples), got {audio.shape}"
        )
    subtype = "FLOAT"
    for name, scale in (("PCM_16", 2**15), ("PCM_24", 2**23)):
        scaled = audio.astype(np.float64) * scale
        if np.array_equal(scaled, np.round(scaled)) and (
            scaled.size == 0 or -scale <= scaled.min() <= scaled.max() < scale
        ):
            subtype = name
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    soundfile.write(str(partial), audio.T, sample_rate, subtype=subtype, format="WAV")
    os.replace(partial, path)
    return path


def claim_split(out_dir: Path, split: str) -> Path:
    """The split's folder, refused when it already holds dialogues (nothing is overwritten)."""
    folder = out_dir / split
    taken = (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in (*AUDIO_SUFFIXES, ".json"))
        if folder.is_dir()
        else []
    )
    if taken:
        raise CorpusError(
            f"{folder} already holds {len(taken)} file(s) (e.g. {taken[0].name}); convert into an empty "
            "split (another DST, or --split) so that nothing there is overwritten"
        )
    return folder


def write_dialogue(folder: Path, user: np.ndarray, system: np.ndarray, manifest: Manifest) -> Path:
    """`<id>.wav` (user on channel 0, system on 1, at the manifest's rate), then `<id>.json`."""
    if user.shape != system.shape or user.shape != (manifest.num_samples,):
        raise ValueError(
            f"dialogue {manifest.dialogue_id}: user {user.shape} and system {system.shape} audio must both "
            f"hold the manifest's {manifest.num_samples} samples"
        )
    save_exact(folder / f"{manifest.dialogue_id}.wav", np.stack([user, system]), manifest.sample_rate)
    return manifest.save(folder / f"{manifest.dialogue_id}.json")


def spoken_words(manifests: Iterable[Manifest], speaker: str) -> list[str]:
    """The words `speaker` says in `manifests`, once each, in first-seen order."""
    words: dict[str, None] = {}
    for manifest in manifests:
        for segment in manifest.speech(speaker):
            said = [w.text for w in segment.words] if segment.words is not None else segment.text.split()
            words.update(dict.fromkeys(said))
    return list(words)


def write_record(
    out_dir: Path, split: str, manifests: list[Manifest], source: dict, task: dict | None = None
) -> Path:
    """corpus.json for an imported split: the roles, the task (`task`, or one naming the corpus's
    words), and where each split came from. A record of an earlier import is extended, never another."""
    record = read_record(out_dir)
    if record is not None and "imported" not in record.get("recipe", {}):
        raise CorpusError(
            f"{out_dir / RECORD_NAME} belongs to a corpus s2s synthesized; convert into another folder"
        )
    recipe = (record or {}).get("recipe", {"imported": {}, "task": None})
    previous = recipe.get("task")
    if task is None:
        task = previous if previous and previous.get("class") == TASK_CLASS else None
        task = _extend_words(task or {"class": TASK_CLASS, "name": out_dir.name}, manifests)
    elif previous is not None and previous != task:
        raise CorpusError(
            f"{out_dir / RECORD_NAME} names task {previous.get('name')!r}, this split's source another "
            f"({task.get('name')!r}); convert it into another folder"
        )
    recipe = {"imported": {**recipe["imported"], split: source}, "task": task}
    splits = {**(record or {}).get("splits", {}), split: {"dialogues": len(manifests)}}
    written = {"format": RECORD_FORMAT, "complete": True, "channels": [USER, SYSTEM], "recipe": recipe,
               "splits": splits}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / (RECORD_NAME + ".partial")
    partial.write_text(json.dumps(written, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, out_dir / RECORD_NAME)
    return out_dir / RECORD_NAME


def _extend_words(task: dict, manifests: list[Manifest]) -> dict:
    extended = dict(task)
    for speaker in (SYSTEM, USER):
        known = list(task.get(f"{speaker}_words", []))
        new = [w for w in spoken_words(manifests, speaker) if w not in set(known)]
        extended[f"{speaker}_words"] = known + new
        if not extended[f"{speaker}_words"]:
            raise CorpusError(
                f"no {speaker} words in the dialogues converted: model v2's token vocabularies come from "
                f"them; transcribe the {speaker}'s channel too"
            )
    return extended
