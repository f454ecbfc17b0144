"""Batches by total duration, random crops, and the padded batch the model consumes.

The sampler holds all the randomness (crop positions and batch order), seeded by (seed, epoch):
the same seed gives the same batches for any number of loader workers, and a resumed run picks up
at the batch where its checkpoint left off (`SamplerState`). Batches are packed so that
(items x longest item) stays within a budget of seconds, like the duration-bucketed batching of
NeMo and WeNet, so short and long dialogues both fill the accelerator.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from s2s.data.audio import audio_as_float
from s2s.data.batch_features import BatchFeatures
from s2s.data.dataset import Crop
from s2s.data.features import LogMelConfig
from s2s.data.token_targets import FrameTargets, UserState
from s2s.data.tokens import PAD


@dataclass(frozen=True)
class SamplerState:
    """Where training stands in the sampler's batches: `position` batches of `epoch` taken by each of
    `world_size` ranks. Checkpointed so that a resumed run sees the batches an uninterrupted one would."""

    epoch: int
    position: int
    world_size: int


class DurationBatchSampler(torch.utils.data.Sampler):
    """Yields lists of `Crop`s whose padded duration (items x longest) is at most `batch_seconds`.

    Each dialogue is cut to at most `max_seconds` (a random window when `shuffle`, its start
    otherwise; starts and lengths are multiples of `hop` samples), and with `length_multiple` to a
    whole multiple of that many samples (training crops on the chunk grid: a padded batch then runs
    attention unpacked, s2s.models.attention.attend). With `static_batch` every batch holds
    `batch_seconds // max_seconds` crops in random order instead of being packed by length, so that
    with the collate's `pad_to` every training batch has one shape (what a CUDA graph replays).
    Under DDP each rank takes every `world_size`-th batch of the same list, in equal counts:
    training drops the remainder; with `repeat_to_share` (evaluation, where every batch counts and
    one val batch must serve two ranks) the first batches are repeated instead, as torch's
    DistributedSampler pads. Rank and world size
    come from torch.distributed when not given. `state_dict()` / `load_state_dict()` carry the epoch
    and the position within it across a resume (see `SamplerState`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        sample_rate: int,
        batch_seconds: float,
        max_seconds: float | None = None,
        shuffle: bool = True,
        seed: int = 0,
        hop: int = 160,
        sort_pool: int = 64,
        rank: int | None = None,
        world_size: int | None = None,
        repeat_to_share: bool = False,
        length_multiple: int | None = None,
        static_batch: bool = False,
    ):
        if not lengths:
            raise ValueError("the batch sampler needs at least one dialogue")
        if batch_seconds <= 0 or (max_seconds is not None and max_seconds <= 0):
            raise ValueError(
                f"batch_seconds and max_seconds must be positive, got {batch_seconds}, {max_seconds}"
            )
        self.lengths = [int(n) for n in lengths]
        self.sample_rate = sample_rate
        self.budget = int(batch_seconds * sample_rate)
        self.max_samples = (
            None if max_seconds is None else max(hop, int(max_seconds * sample_rate) // hop * hop)
        )
        if self.max_samples is not None and self.max_samples > self.budget:
            raise ValueError(
                f"max_seconds={max_seconds} is longer than batch_seconds={batch_seconds}: "
                "one crop would not fit a batch; raise batch_seconds or lower max_seconds"
            )
        if length_multiple is not None and (
            isinstance(length_multiple, bool) or not isinstance(length_multiple, int) or length_multiple <= 0
        ):
            raise ValueError(f"length_multiple must be a positive number of samples, got {length_multiple!r}")
        # crops are whole multiples of this many samples (a dialogue shorter than one stays whole)
        self.length_multiple = length_multiple
        if self.max_samples is not None and length_multiple is not None:
            self.max_samples = max(length_multiple, self.max_samples // length_multiple * length_multiple)
        if static_batch and self.max_samples is None:
            raise ValueError(
                "static_batch (data.static_shapes) needs max_seconds: every batch holds "
                "batch_seconds // max_seconds crops padded to max_seconds"
            )
        # every batch exactly `static_size` crops (the collate pads them to max_samples): one shape
        self.static_size = self.budget // self.max_samples if static_batch else None
        short = [i for i, n in enumerate(self.lengths) if n < hop]
        if short:
            raise ValueError(f"dialogue(s) {short[:5]} are shorter than one {hop}-sample frame")
        self.shuffle = shuffle
        self.seed = seed
        self.hop = hop
        self.sort_pool = sort_pool
        self._rank, self._world_size = rank, world_size
        self.repeat_to_share = repeat_to_share
        self.epoch = 0
        self.sampler = _EpochHandle(self)
        self._resume: SamplerState | None = None
        self._iteration = (0, 0)  # (epoch, start): the epoch of the latest iteration, where it began
        self._yielded = 0  # batches that iteration has yielded

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch: new crops and a new order, still a function of the seed."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[Crop]]:
        batches = self._shard(self.batches())
        start = self._resume_position()
        self._iteration, self._yielded = (self.epoch, start), 0
        for batch in batches[start:]:
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        """This rank's batches in a whole epoch (a resumed epoch yields the rest of them)."""
        return len(self._shard(self.batches()))

    def state_dict(self) -> dict:
        """The epoch and the batches of it yielded so far."""
        return self.state_after(self._yielded)

    def state_after(self, taken: int) -> dict:
        """The state once `taken` batches of the latest iteration are consumed: a loader whose
        workers prefetch passes the count it has handed out, which trails what the sampler yielded."""
        epoch, start = self._iteration
        position = start + taken if epoch == self.epoch else 0  # set_epoch() since: nothing taken yet
        return asdict(SamplerState(self.epoch, position, self._world()[1]))

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off: its epoch, and the next iteration of that epoch starts after
        the batches already taken. Saved on another number of ranks, the batches taken by all ranks
        are skipped (up to world_size - 1 of them may be seen twice)."""
        saved = SamplerState(**state)
        world = self._world()[1]
        position = saved.position
        if saved.world_size != world:
            position = saved.position * saved.world_size // world
            warnings.warn(
                f"resuming data order saved on {saved.world_size} rank(s) on {world}: the "
                f"{saved.position * saved.world_size} batch(es) taken so far this epoch are skipped, "
                f"{position} per rank (up to {world - 1} batch(es) are seen again)",
                stacklevel=2,
            )
        self.epoch = saved.epoch
        self._resume = SamplerState(saved.epoch, position, world)

    def _resume_position(self) -> int:
        """The loaded position, once, and only for the epoch it was saved in."""
        resume, self._resume = self._resume, None
        return resume.position if resume is not None and resume.epoch == self.epoch else 0

    def batches(self) -> list[list[Crop]]:
        """Every batch of this epoch, before sharding across ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        crops = [self._crop(index, length, rng) for index, length in enumerate(self.lengths)]
        order = rng.permutation(len(crops)) if self.shuffle else np.arange(len(crops))
        if self.static_size is not None:
            return self._static_batches([crops[i] for i in order])
        pool_size = max(1, self.sort_pool * max(1, self.budget // max(c.length for c in crops)))
        batches: list[list[Crop]] = []
        for begin in range(0, len(order), pool_size):
            pool = sorted((crops[i] for i in order[begin : begin + pool_size]), key=lambda c: -c.length)
            batch: list[Crop] = []
            for crop in pool:  # longest first: the first item of a batch sets its padded length
                if batch and (len(batch) + 1) * batch[0].length > self.budget:
                    batches.append(batch)
                    batch = []
                batch.append(crop)
            if batch:
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _static_batches(self, crops: list[Crop]) -> list[list[Crop]]:
        """Consecutive groups of `static_size` crops in the given order; training drops the last,
        smaller group (its shape would differ), evaluation keeps it."""
        size = self.static_size
        batches = [crops[i : i + size] for i in range(0, len(crops), size)]
        if self.shuffle and len(batches) > 1 and len(batches[-1]) < size:
            batches.pop()
        return batches

    def _crop(self, index: int, length: int, rng: np.random.Generator) -> Crop:
        kept = length if self.max_samples is None else min(length, self.max_samples)
        if self.length_multiple is not None and kept >= self.length_multiple:
            kept = kept // self.length_multiple * self.length_multiple
        if kept == length:
            return Crop(index, 0, length)
        start = 0
        if self.shuffle:
            start = int(rng.integers(0, (length - kept) // self.hop + 1)) * self.hop
        return Crop(index, start, kept)

    def _world(self) -> tuple[int, int]:
        """(rank, world size): as given, else from torch.distributed, else (0, 1)."""
        if self._rank is not None and self._world_size is not None:
            return self._rank, self._world_size
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        world = torch.distributed.get_world_size() if distributed else 1
        return rank, world

    def _shard(self, batches: list[list[Crop]]) -> list[list[Crop]]:
        rank, world = self._world()
        if world == 1:
            return batches
        if self.repeat_to_share:  # every batch evaluated, the first ones again where counts would differ
            shared = -(-len(batches) // world) * world
            return [batches[i % len(batches)] for i in range(rank, shared, world)]
        per_rank = len(batches) // world
        if per_rank == 0:
            raise ValueError(
                f"{len(batches)} batch(es) cannot be shared by {world} ranks; lower batch_seconds"
            )
        return batches[rank : per_rank * world : world]


class _EpochHandle:
    """Lightning sets each epoch on `loader.batch_sampler.sampler` (torch's BatchSampler layout), never
    on the batch sampler itself: without this handle every epoch had the first epoch's crops and order."""

    def __init__(self, owner: DurationBatchSampler):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


@dataclass
class DialogueBatch:
    """A padded batch. Audio is (B, T) at 16 kHz (float32, or int16 PCM: `audio_as_float`); frames
    are 10 ms, (B, F) or (B, F, n_mels), F = T // hop."""

    names: list[str]
    user_audio: torch.Tensor
    system_audio: torch.Tensor
    audio_lengths: torch.Tensor  # (B,) int64, samples
    frame_lengths: torch.Tensor  # (B,) int64, 10 ms frames
    frame_mask: torch.Tensor  # (B, F) bool, True on real frames
    user_speaking: torch.Tensor  # (B, F) float 0/1
    system_speaking: torch.Tensor  # (B, F) float 0/1
    user_mel: torch.Tensor | None = None  # (B, F, n_mels) log-mel
    user_pitch: torch.Tensor | None = None  # (B, F, 2) pitch_features of the user audio (user_pitch only)
    system_mel: torch.Tensor | None = None
    # Token targets per 40 ms model frame (model v2; None when the dataset makes none), T = F // r:
    system_tokens: torch.Tensor | None = None  # (B, T) int64, PAD past each item's end
    in_reply_at_start: torch.Tensor | None = None  # (B,) bool: the crop starts inside a reply
    user_state: torch.Tensor | None = None  # (B, T) int64 UserState (SILENT past the end)
    user_words: torch.Tensor | None = None  # (B, W) int64 the user's words in the crop (CTC), PAD-padded
    user_word_counts: torch.Tensor | None = None  # (B,) int64
    # The same lengths as host ints (they stay on the host when the batch moves): the training step
    # packs attention and runs the CTC loss from them without reading the device (a sync per read)
    host_frame_lengths: tuple[int, ...] | None = None
    host_user_word_counts: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def pin_memory(self) -> DialogueBatch:
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = False) -> DialogueBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, function) -> DialogueBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return DialogueBatch(
            **{k: function(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        )


class DialogueCollate:
    """Pads items to a common length (a multiple of `pad_multiple` samples) and computes log-mel.

    Features are computed here, in the loader workers, with the same causal front end the
    streaming session uses, so training and streaming see identical frames; with `with_features`
    off the batch leaves bare and the data module adds them on the device (`BatchFeatures`).
    """

    def __init__(
        self,
        log_mel: LogMelConfig | None = None,
        with_features: bool = True,
        pad_multiple: int = 640,
        user_pitch: bool = False,
        pad_to: int | None = None,
    ):
        self.log_mel_config = log_mel or LogMelConfig()
        if pad_multiple % self.log_mel_config.hop:
            raise ValueError(
                f"pad_multiple {pad_multiple} must be a multiple of the {self.log_mel_config.hop}-sample hop"
            )
        self.with_features = with_features  # False: the batch leaves without features (features_on=device)
        self.pad_multiple = pad_multiple
        if pad_to is not None and (pad_to <= 0 or pad_to % pad_multiple):
            raise ValueError(f"pad_to {pad_to} must be a positive multiple of pad_multiple {pad_multiple}")
        self.pad_to = pad_to  # batches are padded to at least this many samples (one shape per run)
        self.user_pitch = user_pitch  # also the user's pitch_features (a model with user_pitch reads them)
        self._features = BatchFeatures(self.log_mel_config, user_pitch)

    def __call__(self, items: list[dict]) -> DialogueBatch:
        hop = self.log_mel_config.hop
        lengths = torch.tensor([item["user"].shape[0] for item in items], dtype=torch.int64)
        padded = max(-(-int(lengths.max()) // self.pad_multiple) * self.pad_multiple, self.pad_to or 0)
        frames = padded // hop

        def stack(key: str, size: int) -> torch.Tensor:
            return stack_padded([item[key] for item in items], size)

        def stack_audio(key: str) -> torch.Tensor:
            audio = [item[key] for item in items]
            if len({a.dtype for a in audio}) > 1:  # int16 PCM beside float files: all float32
                audio = [audio_as_float(a) for a in audio]
            return stack_padded(audio, padded)

        frame_lengths = lengths // hop
        batch = DialogueBatch(
            names=[item["name"] for item in items],
            user_audio=stack_audio("user"),
            system_audio=stack_audio("system"),
            audio_lengths=lengths,
            frame_lengths=frame_lengths,
            frame_mask=torch.arange(frames)[None, :] < frame_lengths[:, None],
            user_speaking=stack("user_speaking", frames),
            system_speaking=stack("system_speaking", frames),
            host_frame_lengths=tuple(frame_lengths.tolist()),
        )
        if "targets" in items[0]:
            _add_token_targets(batch, [item["targets"] for item in items], padded // self.pad_multiple)
        if self.with_features:
            self._features(batch)
        return batch


def _add_token_targets(batch: DialogueBatch, targets: list[FrameTargets], frames: int) -> None:
    """Stack per-item token targets, padded to `frames` model frames (PAD / SILENT past the end)."""

    def stack(tensors: list[torch.Tensor], size: int, value: int = PAD) -> torch.Tensor:
        return stack_padded(tensors, size, value)

    batch.system_tokens = stack([t.system_tokens for t in targets], frames)
    batch.in_reply_at_start = torch.tensor([t.in_reply_at_start for t in targets], dtype=torch.bool)
    batch.user_state = stack([t.user_state for t in targets], frames, int(UserState.SILENT))
    counts = [t.user_words.shape[0] for t in targets]
    batch.user_words = stack([t.user_words for t in targets], max(1, max(counts)))
    batch.user_word_counts = torch.tensor(counts, dtype=torch.int64)
    batch.host_user_word_counts = tuple(counts)


def stack_padded(tensors: list[torch.Tensor], size: int, value: float = 0) -> torch.Tensor:
    """(len(tensors), size, ...) with each tensor at the start of its row and `value` after it.

    One copy of each item into the batch: padding each item first and stacking the copies moved
    every 40 s window's audio twice (most of a 32-window batch's time in a loader worker)."""
    first = tensors[0]
    out = torch.full((len(tensors), size, *first.shape[1:]), value, dtype=first.dtype)
    for row, tensor in enumerate(tensors):
        if tensor.shape[0] > size or tensor.shape[1:] != first.shape[1:] or tensor.dtype != first.dtype:
            raise ValueError(
                f"item {row} of shape {tuple(tensor.shape)} ({tensor.dtype}) does not fit a batch row of "
                f"{size} x {tuple(first.shape[1:])} ({first.dtype})"
            )
        out[row, : tensor.shape[0]] = tensor
    return out
