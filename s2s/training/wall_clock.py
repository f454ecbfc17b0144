"""Where a training launch's wall time goes: a recipe with a time budget (experiment=base_gpu: 10
minutes on one H200, corpus included) is bounded by everything around the steps too.

Phases, in seconds from the launch: before fit (corpus, model, the step-0 validation), fit set-up
until the first batch (data workers, first kernels compiled), the steps themselves (batch start to
end: forward, backward, optimizer), the gaps between steps (waiting for data, logging), validation
(teacher-forced losses and the callbacks' work at its end, free-running included: `free/seconds`
is reported apart), after validation until training resumes (checkpoints are written there), and
the rest (the end of fit).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import lightning


@dataclass
class WallClockReport:
    total: float = 0.0
    before_fit: float = 0.0
    fit_setup: float = 0.0
    steps: float = 0.0
    step_count: int = 0
    between_steps: float = 0.0
    validation: float = 0.0
    free_running: float = 0.0  # part of validation
    after_validation: float = 0.0
    other: float = 0.0

    def line(self) -> str:
        per_step = 1000 * self.steps / self.step_count if self.step_count else float("nan")
        return (
            f"wall clock: {self.total:.0f} s = before fit {self.before_fit:.0f} s + fit set-up "
            f"{self.fit_setup:.0f} s + {self.step_count} steps {self.steps:.0f} s ({per_step:.0f} ms each) "
            f"+ between steps {self.between_steps:.0f} s + validation {self.validation:.0f} s (free-running "
            f"{self.free_running:.0f} s) + after validation (checkpoints) {self.after_validation:.0f} s + "
            f"other {self.other:.0f} s"
        )

    def to_json(self) -> dict:
        return asdict(self)


class WallClock(lightning.Callback):
    """Splits the launch's wall time (from `started`, a time.perf_counter() value) into the phases
    of WallClockReport; `report()` once fit has returned."""

    def __init__(self, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self._report = WallClockReport()
        self._fit_start: float | None = None
        self._batch_start: float | None = None
        self._last_batch_end: float | None = None
        self._validation_start: float | None = None
        self._validation_end: float | None = None

    def on_fit_start(self, trainer, module) -> None:
        self._fit_start = time.perf_counter()
        self._report.before_fit = self._fit_start - self.started

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._validation_end is not None:
            self._report.after_validation += now - self._validation_end
            self._validation_end = None
        elif self._last_batch_end is not None:
            self._report.between_steps += now - self._last_batch_end
        elif self._fit_start is not None and self._report.step_count == 0:
            self._report.fit_setup = now - self._fit_start
        self._batch_start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._batch_start is not None:
            self._report.steps += now - self._batch_start
            self._report.step_count += 1
        self._last_batch_end = now

    def on_validation_start(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        now = time.perf_counter()
        if self._last_batch_end is not None:  # from the last step's end to here: between steps
            self._report.between_steps += now - self._last_batch_end
            self._last_batch_end = None
        self._validation_start = now

    def on_validation_end(self, trainer, module) -> None:
        if self._validation_start is None:
            return
        now = time.perf_counter()
        self._report.validation += now - self._validation_start
        seconds = trainer.callback_metrics.get("free/seconds")
        if seconds is not None:
            self._report.free_running += float(seconds)
        self._validation_start = None
        self._validation_end = now

    def report(self) -> WallClockReport:
        """The phases up to now; `other` is what no phase covers."""
        report = WallClockReport(**asdict(self._report))
        report.total = time.perf_counter() - self.started
        if self._validation_end is not None:  # the last validation's checkpoints, then the end of fit
            report.after_validation += time.perf_counter() - self._validation_end
        covered = (
            report.before_fit + report.fit_setup + report.steps + report.between_steps
            + report.validation + report.after_validation
        )  # fmt: skip
        report.other = max(0.0, report.total - covered)
        return report
