"""Exact resume: a run resumed from its checkpoint at step k takes the batches (dialogues and random
crops) that the uninterrupted run took from step k on, mid-epoch and at an epoch's end; the sampler's
state survives loader workers that prefetch; the learning-rate schedule spans the run's epochs when
max_steps is unset."""

import warnings

import lightning
import pytest
import torch

from s2s.data.batching import DurationBatchSampler
from s2s.data.datamodule import DuplexDataModule, ResumableDataLoader
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.training.checkpoint_callback import RunCheckpoint
from s2s.training.schedule import OptimizerConfig, schedule_steps, warmup_cosine
from s2s.training.token_module import TokenDuplexLightningModule

LENGTHS = [16000 * s for s in (3, 7, 12, 5, 9, 4, 6, 11, 8, 10, 2, 13)]


def _sampler(**changes) -> DurationBatchSampler:
    settings = dict(sample_rate=16000, batch_seconds=12.0, max_seconds=6.0, seed=5, rank=0, world_size=1)
    return DurationBatchSampler(LENGTHS, **{**settings, **changes})


def _epochs(sampler: DurationBatchSampler, epochs: range) -> list:
    taken = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        taken += list(sampler)
    return taken


def test_a_resumed_sampler_continues_the_epoch_where_its_state_left_off():
    whole = _epochs(_sampler(), range(3))
    per_epoch = len(_sampler())
    assert per_epoch >= 4
    first = _sampler()
    first.set_epoch(0)
    list(first)
    first.set_epoch(1)
    iterator = iter(first)
    taken = [next(iterator) for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 1, "position": 2, "world_size": 1}

    resumed = _sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # Lightning sets the epoch again before the first batch
    rest = list(resumed) + _epochs(resumed, range(2, 3))
    assert taken + rest == whole[per_epoch:]
    assert len(resumed) == per_epoch  # the length stays the epoch's: Lightning counts the skipped batches


def test_a_state_saved_on_one_rank_resumes_on_two_without_skipping_a_batch():
    single = _sampler()
    iterator = iter(single)
    for _ in range(3):
        next(iterator)
    state = single.state_dict()
    everything = _sampler().batches()
    resumed = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rank in range(2):
            sampler = _sampler(rank=rank, world_size=2)
            sampler.load_state_dict(state)
            resumed.append(list(sampler))
    assert any("on 2" in str(w.message) for w in caught)
    # 3 batches taken by one rank = 1 per rank on two (floor): batch 2 is seen again, none is skipped
    seen_again = [everything[2]]
    rest = [b for pair in zip(*resumed, strict=True) for b in pair]
    assert rest[: len(seen_again)] == seen_again
    assert rest[len(seen_again) :] == everything[3 : 3 + len(rest) - 1]


class _Crops(torch.utils.data.Dataset):
    def __getitem__(self, crop):
        return crop


def test_the_loader_state_counts_batches_handed_out_not_those_its_workers_prefetched():
    loader = ResumableDataLoader(
        _Crops(), batch_sampler=_sampler(), num_workers=2, collate_fn=lambda crops: crops
    )
    iterator = iter(loader)
    taken = [next(iterator) for _ in range(2)]
    assert loader.batch_sampler._yielded > 2  # the workers ran ahead
    state = loader.state_dict()
    assert state["position"] == 2
    resumed = ResumableDataLoader(_Crops(), batch_sampler=_sampler(), collate_fn=lambda crops: crops)
    resumed.load_state_dict(state)
    assert taken + list(resumed) == _sampler().batches()


class _BatchLog(lightning.Callback):
    """(global step, epoch, names and a checksum of the crops' audio) of every training batch."""

    def __init__(self):
        self.seen: list[tuple] = []

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        checksum = round(float(batch.user_audio.double().sum()), 6)
        self.seen.append((trainer.global_step, trainer.current_epoch, tuple(batch.names), checksum))


def _data(corpus) -> DuplexDataModule:
    return DuplexDataModule(
        root=corpus.out_dir, num_workers=0, max_seconds=2.0, eval_max_seconds=2.0, batch_seconds=4.0,
        generate_if_missing=False, token_targets=True, seed=3,
    )  # fmt: skip


def _module() -> TokenDuplexLightningModule:
    config = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1)
    return TokenDuplexLightningModule(TokenDuplexModel(config), optimizer={"warmup_steps": 2})


def _fit(corpus, folder, max_steps: int, resume_from=None, **trainer_args) -> _BatchLog:
    log = _BatchLog()
    every_validation = RunCheckpoint(
        dirpath=folder, filename="step{step}", monitor="step", mode="max", save_top_k=-1, save_last=True,
        auto_insert_metric_name=False,
    )  # fmt: skip
    trainer = lightning.Trainer(
        accelerator="cpu", max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None,
        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[log, every_validation], default_root_dir=folder,
        **trainer_args,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        trainer.fit(_module(), datamodule=_data(corpus), ckpt_path=resume_from, weights_only=True)
    return log


@pytest.fixture(scope="module")
def uninterrupted(eight_dialogue_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    return folder, _fit(eight_dialogue_corpus, folder, max_steps=10).seen


@pytest.mark.parametrize("step", [6, 4], ids=["mid-epoch", "epoch-end"])
def test_a_run_resumed_from_its_step_k_checkpoint_takes_the_uninterrupted_runs_batches(
    eight_dialogue_corpus, uninterrupted, step, tmp_path
):
    folder, whole = uninterrupted
    assert [s[1] for s in whole] == [0] * 4 + [1] * 4 + [2] * 2  # 4 batches an epoch
    assert whole[:4] != [(s + 4, 0, *rest) for s, _, *rest in whole[4:8]]  # each epoch new crops and order
    checkpoint = folder / f"step{step}.ckpt"
    resumed = _fit(eight_dialogue_corpus, tmp_path, max_steps=10, resume_from=checkpoint).seen
    assert resumed == whole[step:]


def test_the_schedule_spans_the_epochs_when_max_steps_is_unset(eight_dialogue_corpus, tmp_path):
    rates = []

    class Rates(lightning.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = lightning.Trainer(
        accelerator="cpu", max_epochs=2, max_steps=-1, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[Rates()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_module(), datamodule=_data(eight_dialogue_corpus))
    peak, total = OptimizerConfig().lr, 8  # 2 epochs of 4 batches
    assert rates == pytest.approx([peak * warmup_cosine(s, 2, total, 0.1) for s in range(total)])
    assert rates[-1] < 0.2 * peak  # decayed: with a 10,000-step guess it would still be near the peak

    endless = lightning.Trainer(accelerator="cpu", max_epochs=-1, max_steps=-1, logger=False)
    with pytest.raises(ValueError, match=r"trainer\.max_steps"):
        schedule_steps(endless)
