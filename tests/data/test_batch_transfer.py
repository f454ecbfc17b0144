"""A DialogueBatch reaches the GPU with non-blocking copies (Lightning passes `non_blocking` to bare
tensors only, so a batch object was copied tensor by tensor, each copy waiting for the GPU)."""

from dataclasses import fields

import torch

from s2s.data.batching import DialogueBatch
from s2s.data.datamodule import DuplexDataModule


def _batch(tiny_corpus) -> tuple[DuplexDataModule, DialogueBatch]:
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=6.0, eval_max_seconds=6.0, batch_seconds=18.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    data.setup("fit")
    return data, next(iter(data.train_dataloader()))


def test_a_batch_moves_to_a_gpu_with_non_blocking_copies(tiny_corpus, monkeypatch):
    data, batch = _batch(tiny_corpus)
    calls = []

    def record(self, device, non_blocking=False):
        calls.append((torch.device(device), non_blocking))
        return self

    monkeypatch.setattr(DialogueBatch, "to", record)
    assert data.transfer_batch_to_device(batch, torch.device("cuda", 0), 0) is batch
    assert data.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    assert calls == [(torch.device("cuda", 0), True), (torch.device("cpu"), False)]


def test_the_moved_batch_holds_the_same_values(tiny_corpus):
    data, batch = _batch(tiny_corpus)
    moved = data.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, DialogueBatch)
    for field in fields(DialogueBatch):
        before, after = getattr(batch, field.name), getattr(moved, field.name)
        if isinstance(before, torch.Tensor):
            assert after.device.type == "cpu" and torch.equal(before, after), field.name
        else:
            assert before == after, field.name
    plain = torch.arange(5)
    assert torch.equal(data.transfer_batch_to_device(plain, torch.device("cpu"), 0), plain)
