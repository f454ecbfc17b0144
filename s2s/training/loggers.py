"""Experiment tracking that never stops a training run.

The CSV logger (csv_metrics.RunCSVLogger) appends across launches and never deletes a row. wandb
runs offline by default (the run directory syncs later with `wandb sync`) and online when a
project is configured and an API key is available. The run id is kept in the run directory so a
resumed run continues the same wandb run. TensorBoard writes event files to `<run dir>/tensorboard`
(`tensorboard --logdir <run dir>/tensorboard`). wandb and TensorBoard are optional packages (pip
install "s2s[wandb]" / "s2s[tensorboard]"): a missing one, or anything that goes wrong with it,
becomes a warning and training goes on with the CSV logger, which is always there.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
import warnings
from pathlib import Path

from lightning.pytorch.loggers import Logger

from s2s.training.csv_metrics import RunCSVLogger
from s2s.training.run_lock import is_global_rank_zero

RUN_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(run_dir: Path) -> str:
    """The run's wandb id: made on the first launch, read back on every resume. Only global rank 0
    writes it: the other ranks never start a wandb run, and under Slurm, where all ranks start at
    once, their ids would race rank 0's into the file."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if is_global_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def _wandb_online_possible(project: str | None) -> bool:
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file()
    return bool(project) and has_key


def make_loggers(
    run_dir: str | os.PathLike,
    kind: str = "wandb",
    project: str | None = None,
    entity: str | None = None,
    mode: str = "offline",
    name: str | None = None,
    run_config: dict | None = None,
    csv_keep_rows: int | None = None,
) -> list[Logger]:
    """Loggers for `kind` in {wandb, tensorboard, csv, none}, the CSV logger first with all but none.
    wandb `mode`: offline, online, or auto (online when a project and a key are configured).
    `csv_keep_rows`: rows of an existing csv/metrics.csv that belong to this launch's starting point
    (None: all; the rest are moved aside, never deleted)."""
    run_dir = Path(run_dir)
    if kind == "none":
        return []
    csv_logger = RunCSVLogger(save_dir=str(run_dir), name="csv", version="", keep_rows=csv_keep_rows)
    loggers: list[Logger] = [csv_logger]
    if kind == "csv":
        return loggers
    if kind == "tensorboard":
        return loggers + _tensorboard(run_dir)
    if kind != "wandb":
        raise ValueError(f"logger kind must be wandb, tensorboard, csv or none, got {kind!r}")
    if importlib.util.find_spec("wandb") is None:
        warnings.warn(
            f'wandb is not installed (pip install "s2s[wandb]"); logging to CSV in {run_dir / "csv"} only. '
            "logger=tensorboard or logger=csv chooses another logger and silences this",
            stacklevel=2,
        )
        return loggers
    if mode not in ("offline", "online", "auto"):
        raise ValueError(f"wandb mode must be offline, online or auto, got {mode!r}")
    online = mode == "online" or (mode == "auto" and _wandb_online_possible(project))
    if mode == "online" and not _wandb_online_possible(project):
        warnings.warn(
            "wandb online mode needs logger.project and an API key (WANDB_API_KEY or `wandb login`); "
            "logging offline instead",
            stacklevel=2,
        )
        online = False
    try:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(
            save_dir=str(run_dir),
            project=project or "s2s",
            entity=entity,
            name=name,
            id=wandb_run_id(run_dir),
            offline=not online,
            resume="allow",
            settings=_quiet_settings(),
        )
        if run_config is not None:
            logger.experiment.config.update(run_config, allow_val_change=True)
        loggers.append(logger)
    except Exception as error:  # tracking must never stop training
        warnings.warn(
            f"wandb is unavailable ({error!r}); logging to CSV in {run_dir / 'csv'} only", stacklevel=2
        )
    return loggers


def _tensorboard(run_dir: Path) -> list[Logger]:
    """Lightning's TensorBoardLogger (it needs tensorboard or tensorboardX), or none with a warning."""
    if not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
        warnings.warn(
            f'TensorBoard is not installed (pip install "s2s[tensorboard]"); logging to CSV in '
            f"{run_dir / 'csv'} only",
            stacklevel=3,
        )
        return []
    from lightning.pytorch.loggers import TensorBoardLogger

    # version "": one folder per run directory, which a resumed launch appends to (as the CSV does)
    return [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)]


def _quiet_settings():
    import wandb

    return wandb.Settings(console="off", silent=True, x_disable_stats=True)
