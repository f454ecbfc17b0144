"""An s2s corpus <-> Lhotse cuts in the layout of NeMo's duplex speech-to-speech data.

    python -m s2s.data.lhotse_io export SRC DST   # SRC: an s2s corpus (data.root)
    python -m s2s.data.lhotse_io import SRC DST   # SRC: DST of an export, or any such folder of cuts

NeMo's DuplexS2SDataset (nemo/collections/speechlm2/data/s2s_dataset.py) reads one cut per dialogue:
the cut's recording is the user's audio (mono), the custom field `target_audio` the system's; its
supervisions are the turns, `speaker` "user" (input) or "agent" (output), with their text. An export
writes `DST/<split>/cuts.jsonl.gz` and the two mono wavs per dialogue beside it, and adds what NeMo
does not read, so that an import gives back the same manifests: each supervision's word times
(Lhotse's `alignment["word"]`), its s2s kind and exchange (`custom`), the user's pauses and the
manifest's descriptive fields (the cut's `custom["s2s"]`), and the corpus's task (DST/s2s_corpus.json).
Cuts from elsewhere import too: roles from `speaker` (user/User; agent/Assistant/assistant/system),
word times where every turn has them, the system's audio resampled to the user's rate.
Lhotse is an optional dependency: pip install "s2s[lhotse]".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

from s2s.data.audio import load_audio, resample
from s2s.data.corpus import RECORD_NAME
from s2s.data.dataset import DialogueDataset
from s2s.data.imported import claim_split, save_exact, write_dialogue, write_record
from s2s.data.manifest import SYSTEM, USER, Manifest, Segment, Word

CUTS_NAME = "cuts.jsonl.gz"
TASK_NAME = "s2s_corpus.json"  # the exported corpus's record, for the way back
ROLE_NAMES = {USER: "user", SYSTEM: "agent"}  # NeMo's default input_roles / output_roles
ROLES = {
    "user": USER,
    "User": USER,
    "agent": SYSTEM,
    "Assistant": SYSTEM,
    "assistant": SYSTEM,
    "system": SYSTEM,
}
SPLITS = ("train", "val", "test")


class LhotseError(ValueError):
    """Cuts that cannot become s2s dialogues; the message names the cut and the fix."""


def _lhotse():
    try:
        import lhotse
    except ImportError as error:
        raise ImportError('Lhotse export and import need lhotse: pip install "s2s[lhotse]"') from error
    return lhotse


def export_corpus(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Write every split of the s2s corpus `src` as Lhotse cuts under `dst`; returns dialogues per split."""
    lhotse = _lhotse()
    src, dst = Path(src), Path(dst)
    written = {}
    for split in SPLITS:
        if not (src / split).is_dir():
            continue
        dataset = DialogueDataset(src / split, corpus_root=src)
        folder = claim_split(dst, split)
        cuts = []
        for file in dataset.files:
            if file.manifest is None:
                raise LhotseError(f"{file.audio_path} has no manifest: a cut's supervisions come from it")
            audio, rate = load_audio(file.audio_path)
            roles = {USER: audio[dataset.roles.user].numpy(), SYSTEM: audio[dataset.roles.system].numpy()}
            recordings = {}
            for speaker, samples in roles.items():
                path = save_exact(folder / f"{file.name}_{ROLE_NAMES[speaker]}.wav", samples[None], rate)
                recordings[speaker] = lhotse.Recording.from_file(path, recording_id=path.stem)
            cut = recordings[USER].to_cut()
            cut.id = file.name
            cut.supervisions = [
                _supervision(lhotse, file.name, number, segment, recordings[USER].id)
                for number, segment in enumerate(file.manifest.segments)
                if segment.is_speech
            ]
            cut.target_audio = recordings[SYSTEM]
            cut.custom["s2s"] = {
                "id": file.manifest.dialogue_id,
                "info": file.manifest.info,
                "pauses": [
                    {**s.to_json(), "index": number}
                    for number, s in enumerate(file.manifest.segments)
                    if not s.is_speech
                ],
            }
            cuts.append(cut)
        lhotse.CutSet.from_cuts(cuts).to_file(folder / CUTS_NAME)
        written[split] = len(cuts)
    if not written:
        raise LhotseError(f"{src} has none of the split folders {SPLITS}; SRC is an s2s corpus (data.root)")
    if (src / RECORD_NAME).is_file():
        shutil.copy(src / RECORD_NAME, dst / TASK_NAME)
    return written


def _supervision(lhotse, dialogue: str, number: int, segment: Segment, recording_id: str):
    rate = segment.sample_rate
    said = " ".join(w.text for w in segment.words) if segment.words is not None else segment.text
    alignment = None
    if segment.words is not None:
        alignment = {
            "word": [
                lhotse.supervision.AlignmentItem(
                    w.text, w.start_sample / rate, (w.end_sample - w.start_sample) / rate
                )
                for w in segment.words
            ]
        }
    return lhotse.SupervisionSegment(
        id=f"{dialogue}-{number}", recording_id=recording_id, start=segment.start,
        duration=segment.end - segment.start, channel=0, text=said, speaker=ROLE_NAMES[segment.speaker],
        alignment=alignment,
        custom={"kind": segment.kind, "exchange": segment.exchange, "text": segment.text, "index": number},
    )  # fmt: skip


def import_cuts(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Write the cuts in `src/<split>/cuts.jsonl.gz` as an s2s corpus under `dst`."""
    lhotse = _lhotse()
    src, dst = Path(src), Path(dst)
    found = {split: src / split / CUTS_NAME for split in SPLITS if (src / split / CUTS_NAME).is_file()}
    if not found:
        raise LhotseError(f"no {{train,val,test}}/{CUTS_NAME} under {src}; SRC is the DST of an export")
    task = _exported_task(src)
    written = {}
    for split, path in found.items():
        folder = claim_split(dst, split)
        manifests = []
        for cut in lhotse.CutSet.from_file(path):
            user, system, rate = _audio(cut)
            manifest = _manifest(cut, rate, user.shape[0])
            write_dialogue(folder, user, system, manifest)
            manifests.append(manifest)
        write_record(dst, split, manifests, {"format": "lhotse", "path": str(path)}, task)
        written[split] = len(manifests)
    return written


def _exported_task(src: Path) -> dict | None:
    """The task of the corpus an export came from (its vocabularies keep their ids), if recorded."""
    path = src / TASK_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record.get("recipe", {}).get("task") if isinstance(record, dict) else None


def _audio(cut) -> tuple[np.ndarray, np.ndarray, int]:
    """The user's and the system's samples of one cut, both mono at the user's rate."""
    if not cut.has_custom("target_audio"):
        raise LhotseError(
            f"cut {cut.id} has no target_audio: NeMo's duplex cuts carry the system's audio in that custom "
            "field (a Recording), the user's as the cut's recording"
        )
    user = cut.load_audio()
    system = cut.load_target_audio()
    if user.shape[0] != 1 or system.shape[0] != 1:
        raise LhotseError(
            f"cut {cut.id}: the user's and the system's audio must be mono, got {user.shape[0]} and "
            f"{system.shape[0]} channels"
        )
    rate = cut.sampling_rate
    system = system[0]
    if cut.target_audio.sampling_rate != rate:
        import torch

        system = resample(torch.from_numpy(system), cut.target_audio.sampling_rate, rate).numpy()
    system = np.pad(system, (0, max(0, user.shape[1] - system.shape[0])))[: user.shape[1]]
    return user[0], system, rate


def _manifest(cut, rate: int, num_samples: int) -> Manifest:
    s2s = cut.custom.get("s2s", {}) if cut.custom else {}
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    unknown = sorted({s.speaker for s in supervisions if s.speaker not in ROLES})
    if unknown:
        raise LhotseError(
            f"cut {cut.id} has supervisions of speakers {unknown}; s2s reads the roles {sorted(ROLES)} "
            "(the user's, then the system's: NeMo's input_roles and output_roles)"
        )
    timed = all(s.alignment and "word" in s.alignment for s in supervisions)
    segments, order, exchange = [], [], 0
    for sup in supervisions:
        speaker = ROLES[sup.speaker]
        custom = sup.custom or {}
        if speaker == USER and segments and "exchange" not in custom:
            exchange += 1
        words = None
        if timed:
            words = tuple(
                Word(item.symbol, round(item.start * rate), round((item.start + item.duration) * rate))
                for item in sup.alignment["word"]
            )
        segments.append(
            Segment(
                speaker=speaker, kind=custom.get("kind", "turn" if speaker == USER else "reply"),
                start_sample=round(sup.start * rate), end_sample=round((sup.start + sup.duration) * rate),
                text=custom.get("text", sup.text), exchange=int(custom.get("exchange", exchange)),
                sample_rate=rate, words=words,
            )
        )  # fmt: skip
        order.append(custom.get("index"))
    for pause in s2s.get("pauses", []):
        words = tuple(Word(w["text"], w["start_sample"], w["end_sample"]) for w in pause.get("words", ()))
        segments.append(
            Segment(
                speaker=pause["speaker"], kind=pause["kind"], start_sample=pause["start_sample"],
                end_sample=pause["end_sample"], text=pause["text"], exchange=pause["exchange"],
                sample_rate=rate, words=words if timed else None,
            )
        )  # fmt: skip
        order.append(pause.get("index"))
    if None not in order:  # an s2s export: the manifest's own order
        segments = [segment for _, segment in sorted(zip(order, segments, strict=True), key=lambda p: p[0])]
    return Manifest(s2s.get("id", cut.id), rate, num_samples, tuple(segments), s2s.get("info", {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=("export", "import"))
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    run = export_corpus if args.direction == "export" else import_cuts
    counts = run(args.src, args.dst)
    splits = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"{args.direction}ed {splits} dialogues into {args.dst}")


if __name__ == "__main__":
    main()
