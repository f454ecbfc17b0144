"""The run's checkpoints: `last.ckpt` always holds the latest state, plus the best on a monitored score.

Lightning 2.6's ModelCheckpoint(save_last=True) rewrites last.ckpt only when it also saved a top-k
checkpoint, i.e. when the monitored metric improved: a run whose validation loss stopped improving
kept an old last.ckpt, and resuming or evaluating it silently threw training away. Here last.ckpt
is written at every checkpoint event and at the end of fit, whatever the monitored metric does.
The monitored key may be absent at some validations (a score computed every few validations):
then only last.ckpt is written.
"""

from __future__ import annotations

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt follows every checkpoint event; same arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_saved_step: int | None = None
        self._told_missing = False

    def on_validation_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        super().on_validation_end(trainer, module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        super().on_train_epoch_end(trainer, module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        self._save_latest(trainer)  # the final state, whether or not a validation just ran

    def _save_last_checkpoint(self, trainer: lightning.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_step = trainer.global_step

    def _save_latest(self, trainer: lightning.Trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self._last_saved_step == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_topk_checkpoint(self, trainer: lightning.Trainer, monitor_candidates: dict) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            if not self._told_missing:
                rank_zero_info(
                    f"checkpoint: {self.monitor!r} is not logged at step {trainer.global_step}; "
                    "only last.ckpt is written until it is"
                )
                self._told_missing = True
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)
