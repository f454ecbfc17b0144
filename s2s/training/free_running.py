"""Free-running validation: judge the model as it runs, next to its teacher-forced losses.

Teacher-forced validation loss does not predict what a duplex model does on its own output (a lower
loss gave more missed replies). So every few validations this callback streams a few validation
dialogues through a StreamingSession, the model reading back its own output as deployed, and logs
what `stream_eval` reports: response rate and latency, false take-overs, talk-over, barge-in stop
latency and, with a recognizer, whether the replies said the right words. The checkpoint callback
monitors `free/score` (configs/train.yaml; any `free/...` value would do) so the best checkpoint is
the one that behaves best.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import lightning
import torch

from s2s.models.token_sampling import SamplingConfig
from s2s.streaming.cpu_threads import cpu_threads
from s2s.streaming.precision import streaming_dtype
from s2s.streaming.report import free_running_summary
from s2s.streaming.runner import stream_dialogues

log = logging.getLogger(__name__)


class FreeRunningValidation(lightning.Callback):
    """Every `every_n_validations` validations (the first included), stream the first `dialogues`
    validation dialogues (their first `seconds`) and log `free/<metric>` values.

    `precision` "auto" streams a bf16 copy of the model on a GPU (attention through the CuTe
    kernel on Hopper) and fp32 on the CPU. A `recognizer` artifact (scripts/train_recognizer.py)
    adds the reply exact-match; it needs audio, so the vocoder runs only then.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        dialogues: int = 8,
        seconds: float | None = 20.0,
        streams: int = 8,
        precision: str = "auto",
        recognizer: str | None = None,
        window: float = 3.0,
        cpu_threads: int | None = 1,
        sampling: SamplingConfig | dict | None = None,
    ):
        if every_n_validations < 1 or dialogues < 1 or streams < 1:
            raise ValueError(
                "free-running validation needs every_n_validations, dialogues and streams >= 1, got "
                f"{every_n_validations}, {dialogues}, {streams}"
            )
        if seconds is not None and seconds <= 0:
            raise ValueError(f"seconds must be > 0 (or null for whole dialogues), got {seconds}")
        self.every = every_n_validations
        self.dialogues = dialogues
        self.seconds = seconds
        self.streams = streams
        self.precision = precision
        self.recognizer_path = recognizer
        self.window = window
        self.cpu_threads = cpu_threads
        self.sampling = (
            sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**dict(sampling or {}))
        )
        self.validations = 0
        self._recognizer = None

    def state_dict(self) -> dict:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = int(state_dict.get("validations", 0))

    def on_validation_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.validations += 1
        if (self.validations - 1) % self.every:
            return
        summary = self.evaluate(trainer, module) if trainer.is_global_zero else None
        summary = trainer.strategy.broadcast(summary, src=0)  # every rank logs (and monitors) the same
        for name, value in summary.items():
            module.log(f"free/{name}", float("nan") if value is None else float(value), sync_dist=False)

    @torch.no_grad()
    def evaluate(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> dict:
        """Stream, score and return the summary. On the CPU with `cpu_threads` torch threads: a
        streaming step is many small operations, which extra threads only slow down (measured on
        a busy 2-core machine: 28 ms per step with one thread, over 1 s with two)."""
        on_cpu = next(module.model.parameters()).device.type == "cpu"
        with cpu_threads(self.cpu_threads if on_cpu else None):
            return self._evaluate(trainer, module)

    def _evaluate(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> dict:
        began = time.perf_counter()
        dataset = trainer.datamodule.datasets["val"]
        model = self._streaming_model(module.model)
        run = stream_dialogues(
            model,
            dataset,
            indices=range(min(self.dialogues, len(dataset))),
            streams=self.streams,
            max_seconds=self.seconds,
            vocoder=self.recognizer_path is not None,
            sampling=self.sampling,
        )
        summary = free_running_summary(run, model.config, self.window, self._load_recognizer(model))
        summary["seconds"] = time.perf_counter() - began
        log.info(
            "free-running validation at step %d: %s",
            trainer.global_step,
            ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if v is not None and math.isfinite(v)),
        )
        return summary

    def _streaming_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """An eval-mode copy in the streaming precision (the training weights stay untouched)."""
        device = next(model.parameters()).device
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        return copy.deepcopy(model).to(streaming_dtype(precision, device)).eval()

    def _load_recognizer(self, model: torch.nn.Module):
        if self.recognizer_path is None:
            return None
        if self._recognizer is None:
            from s2s.recognizer import load_recognizer

            self._recognizer = load_recognizer(self.recognizer_path, device=next(model.parameters()).device)
        return self._recognizer
