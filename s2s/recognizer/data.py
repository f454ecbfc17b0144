"""Batches of reply windows for training: random window edges, fresh cheap augmentation, padding."""

from __future__ import annotations

from dataclasses import dataclass

import lightning
import torch

from s2s.recognizer.augment import OnlineAugment
from s2s.recognizer.features import WindowFeatures
from s2s.recognizer.vocabulary import Vocabulary


@dataclass(frozen=True)
class Jitter:
    """How far (in 10 ms frames) training moves a window's edges; the reply always stays inside."""

    start: int = 15
    end: int = 30
    keep: int = 3  # frames kept before the reply's onset and after its end


class WindowDataset(torch.utils.data.Dataset):
    """Entries of a WindowFeatures as (log-mel, word ids); with `jitter`, edges move at random."""

    def __init__(
        self,
        features: WindowFeatures,
        vocabulary: Vocabulary,
        jitter: Jitter | None = None,
        augment: OnlineAugment | None = None,
        seed: int = 0,
    ):
        self.features, self.jitter, self.augment = features, jitter, augment
        self.targets = [torch.tensor(vocabulary.encode(words), dtype=torch.long) for words in features.words]
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.jitter is None:
            return self.features.window_mel(i), self.targets[i]
        (start, end), (onset, offset) = self.features.windows[i], self.features.replies[i]
        frames, j = self.features.mels[i].shape[0], self.jitter
        first = self._between(max(0, start - j.start), min(start + j.start, onset - j.keep))
        last = self._between(max(offset + j.keep, end - j.end), min(end + j.end, frames))
        mel = self.features.mels[i][min(first, onset) : max(last, offset)].float()
        if self.augment is not None:
            mel = self.augment(mel, self.generator)
        return mel, self.targets[i]

    def _between(self, low: int, high: int) -> int:
        return low if high <= low else int(torch.randint(low, high + 1, (), generator=self.generator))


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    mels, targets = zip(*items, strict=True)
    return {
        "mel": torch.nn.utils.rnn.pad_sequence(list(mels), batch_first=True),
        "lengths": torch.tensor([m.shape[0] for m in mels]),
        "targets": torch.cat(list(targets)),
        "target_lengths": torch.tensor([t.shape[0] for t in targets]),
    }


class RecognizerData(lightning.LightningDataModule):
    """Training windows (jittered, augmented, shuffled); validation sets named by variant, unchanged."""

    def __init__(
        self,
        train: WindowDataset,
        val: dict[str, WindowDataset],
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    @property
    def val_names(self) -> list[str]:
        return list(self.val)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(
            self.train, batch_size=self.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed),
        )  # fmt: skip

    def val_dataloader(self):
        return [
            torch.utils.data.DataLoader(data, batch_size=self.eval_batch_size, collate_fn=collate)
            for data in self.val.values()
        ]
