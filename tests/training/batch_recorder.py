"""A callback for the DDP tests: what each rank trained on, and one step's loss and gradients."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning
import torch


class BatchRecorder(lightning.Callback):
    """Appends one JSON line per training batch to `<folder>/rank<r>.jsonl` (global step, epoch,
    dialogue names and a checksum of the crops' audio). At global step `grad_step` of a run that
    starts from scratch it also saves, per rank, the batch, the loss, the gradients as the optimizer
    sees them (all-reduced) and rank 0 the weights before the step: `<folder>/step<g>_rank<r>.pt`."""

    def __init__(self, folder: str, grad_step: int | None = 0):
        self.folder = Path(folder)
        self.grad_step = grad_step
        self._step: dict = {}

    def on_train_start(self, trainer, module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if trainer.global_step == self.grad_step and trainer.is_global_zero:
            self._step["weights"] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        line = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "names": list(batch.names),
            "checksum": round(float(batch.user_audio.double().sum()), 6),
        }
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps(line) + "\n")
        if trainer.global_step == self.grad_step:
            self._step["batch"] = {
                f.name: getattr(batch, f.name)
                for f in dataclasses.fields(batch)
                if getattr(batch, f.name) is not None
            }

    def on_before_backward(self, trainer, module, loss) -> None:
        if trainer.global_step == self.grad_step:
            self._step["loss"] = loss.detach().clone()

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step != self.grad_step or "batch" not in self._step:
            return
        self._step["grads"] = {n: p.grad.detach().clone() for n, p in module.model.named_parameters()}
        torch.save(self._step, self.folder / f"step{self.grad_step}_rank{trainer.global_rank}.pt")
        self._step = {}
