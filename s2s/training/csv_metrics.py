"""The run's `csv/metrics.csv`, kept across launches: a resumed run appends, no row is ever deleted.

Lightning's CSVLogger deletes metrics.csv when its folder already holds one, so every resume lost
the history. Here the file is only appended to (or rewritten atomically, all rows kept, when a new
column appears). Rows are flushed whenever a checkpoint is written, and the checkpoint records
how many rows the file then held. A launch resumed from that checkpoint keeps exactly those rows
in metrics.csv and moves the rest (logged after the checkpoint by the launch that was cut short,
whose training is lost) to `metrics.abandoned-<time>.csv` beside it: every step appears once.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import lightning
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

ROWS_KEY = "s2s_metrics_csv_rows"  # checkpoint key: rows metrics.csv held when the checkpoint was written


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, minus the deletion; `keep_rows` rows of an existing file stay (None: all)."""

    def __init__(self, log_dir: str, keep_rows: int | None = None):
        self.keep_rows = keep_rows
        self.rows_on_disk = 0
        self.moved_aside: tuple[int, Path] | None = None  # (rows, file) set aside at start
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        header, rows = _read(path)
        keep = len(rows) if self.keep_rows is None else min(self.keep_rows, len(rows))
        if keep < len(rows):
            aside = path.with_name(f"metrics.abandoned-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.csv")
            _write_atomically(aside, header, rows[keep:])
            self.moved_aside = (len(rows) - keep, aside)
        if keep < len(rows) or header != sorted(header):
            _write_atomically(path, sorted(header), rows[:keep])
        self.metrics_keys = sorted(header)
        self.rows_on_disk = keep

    def save(self) -> None:
        pending = len(self.metrics)
        super().save()
        self.rows_on_disk += pending

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        _, rows = _read(path)
        _write_atomically(path, fieldnames, rows)


class RunCSVLogger(CSVLogger):
    """CSVLogger over AppendingExperimentWriter (see the module docstring)."""

    def __init__(self, *args, keep_rows: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_rows = keep_rows

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir, keep_rows=self.keep_rows)
        return self._experiment


class MetricsRowsInCheckpoint(lightning.Callback):
    """Flush metrics.csv into every checkpoint's moment and record its row count in the checkpoint."""

    def on_save_checkpoint(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.save()
                checkpoint[ROWS_KEY] = logger.experiment.rows_on_disk


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def _write_atomically(path: Path, header: list[str], rows: list[dict]) -> None:
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
