"""The launch's wall time split into phases: every step counted, phases that add up to the total,
validation (with the free-running part inside it) and what follows it told apart."""

import time

import lightning
import pytest

from s2s.data.datamodule import DuplexDataModule
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.training.free_running import FreeRunningValidation
from s2s.training.module import DuplexLightningModule
from s2s.training.wall_clock import WallClock

CONFIG = DuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, train_chunks=(2, 4))


def test_the_phases_add_up_and_count_every_step(tiny_corpus, tmp_path):
    started = time.perf_counter()
    time.sleep(0.05)  # "before fit": what the launch did before trainer.fit
    lightning.seed_everything(0)
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, eval_max_seconds=3.0, batch_seconds=9.0,
        generate_if_missing=False,
    )  # fmt: skip
    clock = WallClock(started)
    free = FreeRunningValidation(dialogues=1, streams=1, seconds=4.0)
    trainer = lightning.Trainer(
        max_steps=5, val_check_interval=2, check_val_every_n_epoch=None, accelerator="cpu", logger=False,
        enable_progress_bar=False, callbacks=[free, clock], enable_checkpointing=False, limit_val_batches=1,
        num_sanity_val_steps=1,
    )  # fmt: skip
    trainer.fit(DuplexLightningModule(DuplexModel(CONFIG)), datamodule=data)
    report = clock.report()

    assert report.step_count == 5
    assert report.before_fit >= 0.05
    parts = (
        report.before_fit, report.fit_setup, report.steps, report.between_steps, report.validation,
        report.after_validation, report.other,
    )  # fmt: skip
    assert all(part >= 0 for part in parts), report
    assert sum(parts) == pytest.approx(report.total, abs=1e-3), report
    assert report.validation > 0 and 0 < report.free_running <= report.validation, report
    assert report.steps > 0 and report.fit_setup > 0, report
    assert "5 steps" in report.line() and "free-running" in report.line()
