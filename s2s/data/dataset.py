"""A folder of stereo dialogues (one channel the user, the other the system), synthesized or recorded.

Each item is a crop of one dialogue: both channels at the dataset's sample rate (float32, or a
16-bit file's int16 samples with `int16_audio`) and, per 10 ms
frame, whether the user and the system are speaking. Speaking flags come from the manifest beside
the wav when there is one (exact), otherwise from the channel's energy (recordings without labels).
Which channel is which comes from the data (corpus.json, s2s manifests) or the `channels` setting
(channels.py); a folder that states neither is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2s.data.audio import AudioError, audio_as_float, audio_info, load_audio
from s2s.data.channels import S2S_LAYOUT, ChannelRoles, resolve_roles
from s2s.data.corpus import RECORD_NAME, read_record
from s2s.data.manifest import SYSTEM, USER, Manifest, ManifestError, load_manifest
from s2s.data.token_targets import frame_targets
from s2s.data.tokens import TokenVocabulary

AUDIO_SUFFIXES = (".wav", ".flac")


@dataclass(frozen=True)
class DialogueFile:
    audio_path: Path
    manifest: Manifest | None
    file_rate: int
    file_frames: int
    num_samples: int  # at the dataset's sample rate

    @property
    def name(self) -> str:
        return self.audio_path.stem


@dataclass(frozen=True)
class Crop:
    """Which part of which dialogue to read: samples [start, start + length) at the dataset's rate."""

    index: int
    start: int
    length: int


@dataclass(frozen=True)
class TokenVocabularies:
    """The token streams' vocabularies (from the corpus's task) and the model frame in samples."""

    system: TokenVocabulary
    user: TokenVocabulary
    frame_size: int = 640

    @classmethod
    def from_task(cls, task: dict, frame_size: int = 640) -> TokenVocabularies:
        return cls(TokenVocabulary.from_task(task, SYSTEM), TokenVocabulary.from_task(task, USER), frame_size)


class DialogueDataset(torch.utils.data.Dataset):
    """Stereo dialogues in `folder` (*.wav / *.flac), each with an optional `<stem>.json` manifest.

    Indexing with an int gives the whole dialogue; with a `Crop`, that span (the batch sampler
    draws crops, so all randomness lives in one seeded place). `channels` ({user: i, system: j})
    says which channel is which where the data does not (its corpus.json, in `corpus_root`, by default
    the folder's parent, or s2s manifests); items always hold the user as "user".
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        sample_rate: int = 16000,
        hop: int = 160,
        vad_threshold_db: float = -45.0,
        vocabularies: TokenVocabularies | None = None,
        channels: ChannelRoles | Mapping | None = None,
        corpus_root: str | os.PathLike | None = None,
        int16_audio: bool = False,
    ):
        self.folder = Path(folder)
        # items carry 16-bit PCM files' samples as int16 (s2s.data.audio.audio_as_float turns them into
        # the float32 they would otherwise be): half the bytes on the way to the training device
        self.int16_audio = int16_audio
        self.vocabularies = vocabularies
        self.sample_rate = sample_rate
        self.hop = hop
        self.vad_threshold_db = vad_threshold_db
        if not self.folder.is_dir():
            raise FileNotFoundError(f"dialogue folder {self.folder} does not exist")
        paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not paths:
            raise FileNotFoundError(
                f"no .wav or .flac dialogues in {self.folder}; put stereo recordings there "
                "(one channel the user, the other the system) or run `python scripts/make_data.py`"
            )
        self.files = [self._index(path) for path in paths]
        self.roles = self._roles(channels, self.folder.parent if corpus_root is None else Path(corpus_root))

    def _roles(self, channels: ChannelRoles | Mapping | None, corpus_root: Path) -> ChannelRoles:
        """The setting, or what corpus.json records (s2s's records without the key are synthetic:
        user on 0), or the layout s2s manifests describe (user on 0)."""
        record = read_record(corpus_root)
        if record is not None:
            recorded = ChannelRoles.parse(record.get("channels", S2S_LAYOUT.names))
            return resolve_roles(str(self.folder), channels, recorded, str(corpus_root / RECORD_NAME))
        labelled = [f for f in self.files if f.manifest is not None]
        by = f"the s2s manifests in {self.folder} (e.g. {labelled[0].name}.json)" if labelled else ""
        return resolve_roles(str(self.folder), channels, S2S_LAYOUT if labelled else None, by)

    def _index(self, path: Path) -> DialogueFile:
        info = audio_info(path)
        if info.channels != 2:
            raise AudioError(
                f"{path} has {info.channels} channel(s); a dialogue must be stereo (one channel the user, "
                "the other the system)"
            )
        manifest = None
        manifest_path = path.with_suffix(".json")
        if manifest_path.is_file():
            manifest = load_manifest(manifest_path)
            if manifest.sample_rate != info.samplerate or manifest.num_samples != info.frames:
                raise ManifestError(
                    f"{manifest_path} describes {manifest.num_samples} samples at "
                    f"{manifest.sample_rate} Hz but {path} has {info.frames} at {info.samplerate} Hz; "
                    "the manifest belongs to another file"
                )
        num_samples = (
            info.frames
            if info.samplerate == self.sample_rate
            else math.floor(info.frames * self.sample_rate / info.samplerate)
        )
        return DialogueFile(path, manifest, info.samplerate, info.frames, num_samples)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def lengths(self) -> list[int]:
        return [f.num_samples for f in self.files]

    def __getitem__(self, item: int | Crop) -> dict:
        crop = item if isinstance(item, Crop) else Crop(int(item), 0, self.files[int(item)].num_samples)
        file = self.files[crop.index]
        if not (crop.start >= 0 and crop.length > 0 and crop.start + crop.length <= file.num_samples):
            raise IndexError(f"crop {crop} is outside {file.name} ({file.num_samples} samples)")
        audio = self._read(file, crop)
        frames = crop.length // self.hop
        if file.manifest is not None:
            user = self._flags_from_manifest(file, crop, USER, frames)
            system = self._flags_from_manifest(file, crop, SYSTEM, frames)
        else:
            user, system = (self._flags_from_energy(audio_as_float(audio[c]), frames) for c in (0, 1))
        item = {
            "name": file.name,
            "user": audio[0],
            "system": audio[1],
            "user_speaking": user,
            "system_speaking": system,
        }
        if self.vocabularies is not None:
            if file.manifest is None:
                raise ManifestError(
                    f"{file.audio_path} has no manifest: token targets (model v2) need who says which "
                    "word when; train model v1 on unlabelled recordings (experiment=v1_baseline), or "
                    "add manifests"
                )
            item["targets"] = frame_targets(
                file.manifest, self.vocabularies.system, self.vocabularies.user,
                frame_size=self.vocabularies.frame_size, start=crop.start, num_samples=crop.length,
                sample_rate=self.sample_rate,
            )  # fmt: skip
        return item

    def _read(self, file: DialogueFile, crop: Crop) -> torch.Tensor:
        if file.file_rate == self.sample_rate:
            audio, _ = load_audio(
                file.audio_path, start=crop.start, frames=crop.length, keep_pcm16=self.int16_audio
            )
        else:
            # Read a margin around the span for the resampling filter, starting on a sample where
            # the two rates' grids coincide so that the crop lands on the whole file's output grid.
            step_in = file.file_rate // math.gcd(file.file_rate, self.sample_rate)
            step_out = self.sample_rate // math.gcd(file.file_rate, self.sample_rate)
            first_out = max(0, crop.start - 64) // step_out * step_out
            first = first_out // step_out * step_in
            last = min(file.file_frames, math.ceil((crop.start + crop.length + 64) * step_in / step_out))
            audio, _ = load_audio(file.audio_path, self.sample_rate, start=first, frames=last - first)
            audio = audio[:, crop.start - first_out : crop.start - first_out + crop.length]
        if audio.shape[1] < crop.length:
            audio = torch.nn.functional.pad(audio, (0, crop.length - audio.shape[1]))
        return audio if self.roles == S2S_LAYOUT else audio[[self.roles.user, self.roles.system]]

    def _flags_from_manifest(self, file: DialogueFile, crop: Crop, speaker: str, frames: int) -> torch.Tensor:
        """A frame speaks when at least half of its 10 ms hop lies inside a speech segment."""
        scale = self.sample_rate / file.manifest.sample_rate
        active = np.zeros(frames * self.hop, dtype=np.float32)
        for segment in file.manifest.speech(speaker):
            start = round(segment.start_sample * scale) - crop.start
            end = round(segment.end_sample * scale) - crop.start
            active[max(start, 0) : max(min(end, active.size), 0)] = 1.0
        return torch.from_numpy((active.reshape(frames, self.hop).mean(axis=1) >= 0.5).astype(np.float32))

    def _flags_from_energy(self, channel: torch.Tensor, frames: int) -> torch.Tensor:
        """Unlabelled recordings: a frame speaks when its RMS is above the threshold (dBFS)."""
        hops = channel[: frames * self.hop].reshape(frames, self.hop)
        rms_db = 10 * torch.log10(hops.pow(2).mean(dim=1) + 1e-12)
        return (rms_db > self.vad_threshold_db).float()
