"""LightningDataModule over a dialogue folder: `<root>/{train,val,test}/*.wav` (+ manifests).

With the default settings a new user needs no data step: if the train folder has no audio, the
default synthetic corpus is generated there first (with a progress bar). Real recordings work the
same way: stereo wav files in the three split folders, with `channels` saying which channel is the
user and which the system where the folder's corpus.json and manifests do not (s2s/data/channels.py).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import lightning
import torch

from s2s.data.batch_features import FEATURES_ON, BatchFeatures
from s2s.data.batching import DialogueBatch, DialogueCollate, DurationBatchSampler
from s2s.data.channels import ChannelRoles
from s2s.data.corpus import (
    CorpusError,
    check_task,
    corpus_recipe,
    generate_corpus,
    read_record,
    recipe_differences,
)
from s2s.data.dataset import AUDIO_SUFFIXES, DialogueDataset, TokenVocabularies
from s2s.data.features import LogMelConfig
from s2s.data.synth import CorpusConfig
from s2s.data.tasks import DialogueTask, say_in_german


class DuplexDataModule(lightning.LightningDataModule):
    """Train on random crops batched by duration; validate and test on deterministic crops.

    Under DDP set the trainer's `use_distributed_sampler=False`: the batch sampler shards batches
    across ranks itself. The loaders are resumable: Lightning checkpoints the training loader's epoch
    and position, and a resumed run continues with the batch an uninterrupted run would take next.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data/synth",
        splits: Mapping[str, str] | None = None,
        sample_rate: int = 16000,
        max_seconds: float = 16.0,
        eval_max_seconds: float | None = 60.0,
        batch_seconds: float = 128.0,
        num_workers: int = 2,
        seed: int = 0,
        log_mel: LogMelConfig | Mapping | None = None,
        with_features: bool = True,
        pad_multiple: int = 640,
        vad_threshold_db: float = -45.0,
        generate_if_missing: bool = True,
        corpus: CorpusConfig | Mapping | None = None,
        task: DialogueTask | None = None,
        token_targets: bool = False,
        frame_samples: int = 640,
        channels: ChannelRoles | Mapping | None = None,
        user_pitch: bool = False,
        features_on: str = "workers",
        int16_audio: bool = False,
        crop_multiple_frames: int | None = None,
        static_shapes: bool = False,
    ):
        super().__init__()
        # every training batch batch_seconds // max_seconds crops padded to max_seconds: one shape
        self.static_shapes = static_shapes
        if crop_multiple_frames is not None and (
            isinstance(crop_multiple_frames, bool)
            or not isinstance(crop_multiple_frames, int)
            or crop_multiple_frames <= 0
        ):
            raise ValueError(
                f"data.crop_multiple_frames={crop_multiple_frames!r}: give a positive number of model "
                "frames (the longest training chunk, e.g. 8) or null"
            )
        # training crops are whole multiples of this many model frames: with the longest training
        # chunk, no real query's chunk reaches a padded frame and attention skips packing
        self.crop_multiple_frames = crop_multiple_frames
        # 16-bit PCM audio travels as int16 from the file to where the features are computed
        self.int16_audio = int16_audio
        if features_on not in FEATURES_ON:
            raise ValueError(
                f"data.features_on={features_on!r}: use 'workers' (log-mel and pitch computed by the "
                f"loader workers) or 'device' (on the training device after the batch is moved there)"
            )
        self.features_on = features_on
        self.user_pitch = user_pitch  # batches carry the user's pitch_features too (model user_pitch)
        self.token_targets = token_targets  # per model frame of `frame_samples` (40 ms at 16 kHz)
        self.frame_samples = frame_samples
        self.channels = ChannelRoles.parse(channels)  # None: the data must say (corpus.json, manifests)
        self.root = Path(root)
        self.splits = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.eval_max_seconds = eval_max_seconds
        self.batch_seconds = batch_seconds
        self.num_workers = num_workers
        self.seed = seed
        self.log_mel = (
            LogMelConfig(**log_mel) if isinstance(log_mel, Mapping) else (log_mel or LogMelConfig())
        )
        if self.log_mel.sample_rate != sample_rate:
            raise ValueError(
                f"log_mel.sample_rate {self.log_mel.sample_rate} differs from sample_rate {sample_rate}"
            )
        self.with_features = with_features
        self.pad_multiple = pad_multiple
        self.vad_threshold_db = vad_threshold_db
        self.generate_if_missing = generate_if_missing
        self.corpus = corpus
        self.task = task
        self.datasets: dict[str, DialogueDataset] = {}
        self._device_features = BatchFeatures(self.log_mel, user_pitch)  # features_on="device"

    def corpus_config(self) -> CorpusConfig:
        if isinstance(self.corpus, CorpusConfig):
            return dataclasses.replace(self.corpus, out_dir=str(self.root))
        return CorpusConfig.from_dict({**dict(self.corpus or {}), "out_dir": str(self.root)})

    def prepare_data(self) -> None:
        """Generate the synthetic corpus when the train folder is empty (or a generation was cut short).
        With a `task`, a corpus of another task in root is refused rather than trained on."""
        if not self.generate_if_missing:
            return
        record = read_record(self.root)
        if self.task is not None:
            check_task(self.root, self.task)
        task = self.task or say_in_german()
        unfinished = record is not None and not record.get("complete", False)
        if unfinished or not _has_audio(self.root / self.splits["train"]):
            print(
                f"no dialogues in {self.root / self.splits['train']}: synthesizing the "
                f"{task.name!r} corpus there"
            )
            summary = generate_corpus(self.corpus_config(), task, progress=True)
            print(summary.describe())
        elif record is not None and self.corpus is not None:
            self._warn_if_made_otherwise(record, task)

    def _warn_if_made_otherwise(self, record: dict, task: DialogueTask) -> None:
        """A complete corpus already in root is trained on as it is, even when `corpus` (this run's
        recipe) would make another: say so, naming the settings, so a changed recipe (more pauses in
        train, other voices) is not silently ignored. The task is checked apart (check_task)."""
        stored = record.get("recipe") if isinstance(record.get("recipe"), dict) else {}
        wanted = corpus_recipe(self.corpus_config(), task)
        differences = recipe_differences(
            {k: stored.get(k) for k in ("generator", "config")},
            {k: wanted[k] for k in ("generator", "config")},
        )
        if differences:
            warnings.warn(
                f"{self.root} holds a corpus made with other settings than this run's data.corpus "
                f"(differences in: {', '.join(differences)}); training on the corpus it holds. To train on "
                f"this run's recipe, point data.root at another folder (the corpus is synthesized there "
                f"when empty) or remake it with the same corpus settings: python scripts/make_data.py "
                f"corpus.out_dir={self.root} overwrite=true",
                stacklevel=2,
            )

    def vocabularies(self) -> TokenVocabularies:
        """The token vocabularies of the corpus's task (model v2's targets), from root's corpus.json."""
        record = read_record(self.root)
        task = (record or {}).get("recipe", {}).get("task") if isinstance(record, dict) else None
        if task is None:
            raise CorpusError(
                f"model v2 trains on token targets (data.token_targets=true), which need the task the "
                f"corpus in {self.root} was made for, and {self.root / 'corpus.json'} does not name one. "
                f"{_V2_NEEDS}"
            )
        return TokenVocabularies.from_task(task, frame_size=self.frame_samples)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        vocabularies = self.vocabularies() if self.token_targets else None
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = DialogueDataset(
                    self.root / self.splits[split],
                    sample_rate=self.sample_rate,
                    hop=self.log_mel.hop,
                    vad_threshold_db=self.vad_threshold_db,
                    vocabularies=vocabularies,
                    channels=self.channels,
                    corpus_root=self.root,
                    int16_audio=self.int16_audio,
                )
                if vocabularies is not None:
                    _check_manifests(self.datasets[split])

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("train", shuffle=True, max_seconds=self.max_seconds)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("val", shuffle=False, max_seconds=self.eval_max_seconds)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("test", shuffle=False, max_seconds=self.eval_max_seconds)

    def _loader(self, split: str, shuffle: bool, max_seconds: float | None) -> torch.utils.data.DataLoader:
        if split not in self.datasets:
            self.setup(None)
        dataset = self.datasets[split]
        sampler = DurationBatchSampler(
            dataset.lengths,
            sample_rate=self.sample_rate,
            batch_seconds=max(self.batch_seconds, max_seconds or 0.0),
            max_seconds=max_seconds,
            shuffle=shuffle,
            seed=self.seed,
            hop=self.log_mel.hop,
            repeat_to_share=split != "train",
            length_multiple=(
                self.crop_multiple_frames * self.frame_samples
                if split == "train" and self.crop_multiple_frames
                else None
            ),
            static_batch=self.static_shapes and split == "train",
        )
        pad_to = None
        if sampler.static_size is not None:
            pad_to = -(-sampler.max_samples // self.pad_multiple) * self.pad_multiple
        return ResumableDataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=DialogueCollate(
                self.log_mel,
                with_features=self.with_features and self.features_on == "workers",
                pad_multiple=self.pad_multiple,
                user_pitch=self.user_pitch,
                pad_to=pad_to,
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_single_thread_worker,
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """A DialogueBatch moves with non-blocking copies from its pinned memory. Lightning passes
        `non_blocking` to bare tensors only, so each of a batch's tensors was a blocking copy: the host
        waited for the GPU to finish the queued step before every copy (33 ms a step of
        experiment=base_gpu on the H200, profiled 2026-12-05, docs/benchmarks.md). The copies are
        ordered on the current stream before the step that reads them, and PyTorch keeps the pinned
        source alive until they are done."""
        if isinstance(batch, DialogueBatch):
            return batch.to(device, non_blocking=torch.device(device).type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With features_on="device": the batch's features, computed where Lightning moved it."""
        if self.with_features and self.features_on == "device" and isinstance(batch, DialogueBatch):
            batch = self._device_features(batch)
        return batch


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader over a DurationBatchSampler that Lightning can checkpoint and resume.

    Lightning saves `state_dict()` of a training loader that has one and hands it back to
    `load_state_dict()` before a resumed fit draws its first batch. With loader workers the sampler
    runs ahead of training by the prefetched batches, so the position saved is the count of batches
    this loader has returned in this process, not the sampler's own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._returned = 0

    def __iter__(self):
        self._returned = 0
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self._returned += 1
            yield batch

    def state_dict(self) -> dict:
        return self.batch_sampler.state_after(self._returned)

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


_V2_NEEDS = (
    "Either train model v1, which needs no labels: add experiment=v1_baseline to the command (model "
    "tiny_v1, module v1, data.token_targets=false), or give every dialogue a manifest (<stem>.json) "
    "and the folder a corpus.json naming the task, as scripts/make_data.py writes them"
)


def _check_manifests(dataset: DialogueDataset) -> None:
    """Token targets come from the manifests: refuse a folder with unlabelled dialogues up front."""
    missing = [f.audio_path for f in dataset.files if f.manifest is None]
    if missing:
        raise CorpusError(
            f"model v2 trains on token targets (data.token_targets=true), which come from each "
            f"dialogue's manifest, and {len(missing)} of the {len(dataset.files)} dialogues in "
            f"{dataset.folder} have none (e.g. {missing[0].name}). {_V2_NEEDS}"
        )


def _has_audio(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in AUDIO_SUFFIXES for p in folder.iterdir())


def _single_thread_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers run in parallel already; more threads would oversubscribe the cores
