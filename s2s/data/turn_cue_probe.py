"""What a turn-taking probe sees: the user's audio up to each silence onset, labelled pause or end of turn.

Why: a duplex model must not take the turn when the user pauses inside a turn, yet must reply soon
after the user ends one. Both begin the same way, the user falls silent; only what the user said and
how (intonation, the words so far) tells them apart. Training a small classifier on the user's audio
up to each onset measures how separable the two are in a corpus, independently of any duplex model.

Onsets come from the manifests: a user "pause" segment starts a pause (label 1); a user "turn" ends an
end of turn (label 0). An onset counts only when the user stays silent for the `after` seconds the
features look past it (the probe of a model that waits must not hear the user resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2s.data.dataset import DialogueDataset
from s2s.data.features import LogMel, LogMelConfig
from s2s.data.manifest import USER, Manifest, ManifestError
from s2s.data.pitch import PitchConfig, pitch_track

PAUSE, TURN_END = 1, 0


@dataclass(frozen=True)
class SilenceOnset:
    """One place where the user falls silent: sample `sample` of dialogue `dialogue` (manifest rate)."""

    dialogue: str
    sample: int
    label: int  # PAUSE or TURN_END
    silence: int  # samples until the user speaks again (to the dialogue's end if never)


@dataclass(frozen=True)
class ProbeWindow:
    """Which frames the probe sees: `before` seconds up to the onset and `after` seconds past it."""

    before: float = 1.0
    after: float = 0.0
    pitch: bool = False  # add [voicing, log2 F0 relative to the window's voiced median] channels
    # Subtract the mean log-mel of the user's speech so far in the dialogue (its speech segments up to
    # the onset): the per-speaker calibration a model that hears the whole dialogue can make.
    speaker: bool = False

    def __post_init__(self):
        if self.before <= 0 or self.after < 0:
            raise ValueError(f"the probe window needs before > 0 and after >= 0 seconds, got {self}")


def silence_onsets(manifest: Manifest) -> list[SilenceOnset]:
    """Every pause start and every turn end of the user in `manifest`, in time order."""
    speech = [(s.start_sample, s.end_sample) for s in manifest.speech(USER)]
    pauses = [s for s in manifest.segments if s.speaker == USER and s.kind == "pause"]
    onsets = [
        SilenceOnset(manifest.dialogue_id, p.start_sample, PAUSE, p.end_sample - p.start_sample)
        for p in pauses
    ]
    for turn in (s for s in manifest.segments if s.speaker == USER and s.kind == "turn"):
        later = [start for start, end in speech if start >= turn.end_sample]
        if any(start < turn.end_sample < end for start, end in speech):
            continue  # another user segment (a barge-in) still sounds: not a silence onset
        resume = min(later, default=manifest.num_samples)
        onsets.append(SilenceOnset(manifest.dialogue_id, turn.end_sample, TURN_END, resume - turn.end_sample))
    return sorted(onsets, key=lambda o: o.sample)


@dataclass(frozen=True)
class ProbeExamples:
    """Feature windows (examples, frames, channels) with their labels and where they come from."""

    features: torch.Tensor
    labels: torch.Tensor  # (examples,) 1 pause, 0 end of turn
    dialogues: tuple[str, ...]
    onsets: tuple[SilenceOnset, ...]
    skipped: int  # onsets whose silence is shorter than the window's `after`
    after_frames: int = 0  # the window's last frames that lie past the onset

    def counts(self) -> dict[str, int]:
        pauses = int(self.labels.sum())
        return {"pauses": pauses, "turn_ends": len(self.labels) - pauses, "skipped": self.skipped}

    def subset(self, keep: np.ndarray) -> ProbeExamples:
        keep = np.asarray(keep, dtype=bool)
        index = torch.from_numpy(np.flatnonzero(keep))
        return ProbeExamples(
            self.features[index], self.labels[index],
            tuple(d for d, k in zip(self.dialogues, keep, strict=True) if k),
            tuple(o for o, k in zip(self.onsets, keep, strict=True) if k), 0, self.after_frames,
        )  # fmt: skip


def collect_examples(
    folders: list[str | os.PathLike],
    window: ProbeWindow,
    mel: LogMelConfig | None = None,
    pitch: PitchConfig | None = None,
) -> ProbeExamples:
    """The feature windows at every silence onset of the dialogues in `folders` (splits of a corpus)."""
    mel = mel or LogMelConfig()
    files = []
    for folder in folders:
        dataset = DialogueDataset(folder, sample_rate=mel.sample_rate, hop=mel.hop)
        files += [(dataset, index) for index in range(len(dataset))]
    front_end = LogMel(mel)
    pitch = pitch or PitchConfig(sample_rate=mel.sample_rate, hop=mel.hop)
    frames_before = round(window.before * mel.sample_rate / mel.hop)
    after = round(window.after * mel.sample_rate)
    features, labels, names, kept, skipped = [], [], [], [], 0
    for dataset, index in files:
        file = dataset.files[index]
        if file.manifest is None:
            raise ManifestError(
                f"{file.audio_path} has no manifest: the probe needs the manifest's pause and turn "
                "segments to know where the user pauses and where a turn ends"
            )
        onsets = silence_onsets(file.manifest)
        if not onsets:
            continue
        user = dataset[index]["user"]
        channels = [front_end(user[None])[0]]
        if window.pitch:
            channels.append(pitch_track(user, pitch))
        track = torch.cat(channels, dim=1)
        floor = _silence_frame(front_end, pitch if window.pitch else None)
        scale = mel.sample_rate / file.manifest.sample_rate
        if window.speaker:
            spoken = _speech_so_far(file.manifest, scale, mel.hop, track[:, : mel.n_mels])
        for onset in onsets:
            if onset.silence * scale < after:
                skipped += 1
                continue
            end = (round(onset.sample * scale) + after) // mel.hop  # frames whose audio ends by then
            start = end - frames_before - after // mel.hop
            piece = track[max(start, 0) : end]
            if start < 0:
                piece = torch.cat([floor.expand(-start, -1), piece])
            if window.pitch:
                piece = _relative_pitch(piece)
            if window.speaker:
                mean = spoken[min(end, round(onset.sample * scale) // mel.hop) - 1]  # speech before the onset
                piece = torch.cat([piece[:, : mel.n_mels] - mean, piece[:, mel.n_mels :]], dim=1)
            features.append(piece)
            labels.append(onset.label)
            names.append(file.name)
            kept.append(onset)
    if not features:
        raise ManifestError(
            f"no silence onsets in {[str(f) for f in folders]}: their manifests list no user turns or pauses "
            f"(or none with {window.after} s of silence after them)"
        )
    return ProbeExamples(
        torch.stack(features), torch.tensor(labels), tuple(names), tuple(kept), skipped, after // mel.hop
    )


def _speech_so_far(manifest: Manifest, scale: float, hop: int, mel: torch.Tensor) -> torch.Tensor:
    """(frames, n_mels): row t is the mean log-mel of the user's speech frames 0..t (speech: the frame's
    hop starts inside a user speech segment and outside its pauses). Read only up to an onset, it
    uses no label of that onset."""
    inside = torch.zeros(mel.shape[0], dtype=torch.bool)
    for segment in manifest.speech(USER):
        inside[round(segment.start_sample * scale) // hop : round(segment.end_sample * scale) // hop] = True
    for pause in (s for s in manifest.segments if s.speaker == USER and s.kind == "pause"):
        inside[round(pause.start_sample * scale) // hop : round(pause.end_sample * scale) // hop] = False
    total = (mel * inside[:, None]).cumsum(dim=0)
    return total / inside.cumsum(dim=0).clamp_min(1)[:, None]


def _silence_frame(front_end: LogMel, pitch: PitchConfig | None) -> torch.Tensor:
    """The frame of digital silence, for windows that reach back before the dialogue starts."""
    silence = torch.zeros(1, front_end.config.window)
    frame = front_end(silence)[0, -1:]
    return torch.cat([frame, torch.zeros(1, 2)], dim=1) if pitch is not None else frame


def _relative_pitch(piece: torch.Tensor) -> torch.Tensor:
    """log2 F0 minus the window's voiced median: the contour, not the speaker's register."""
    voicing, log_f0 = piece[:, -2], piece[:, -1]
    voiced = (voicing > 0.5) & (log_f0 > 0)
    if voiced.any():
        log_f0 = torch.where(voiced, log_f0 - log_f0[voiced].median(), torch.zeros_like(log_f0))
    else:
        log_f0 = torch.zeros_like(log_f0)
    return torch.cat([piece[:, :-1], log_f0[:, None]], dim=1)


def split_folders(root: str | os.PathLike, splits: tuple[str, ...]) -> list[Path]:
    """The split folders of a corpus root, refusing missing ones with what exists."""
    root = Path(root)
    folders = [root / split for split in splits]
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"split folder(s) {[str(m) for m in missing]} do not exist; {root} has {present}"
        )
    return folders
