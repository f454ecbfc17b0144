"""The training job: build everything from the Hydra config, resume when the run was cut short, fit.

Each run lives in one directory (`outputs/train/<run_name>` by default): resolved config,
checkpoints (last.ckpt, always the latest state, + the best on the monitored metric), CSV metrics,
the wandb offline run, and audio/image samples. Re-running the same command finds
`checkpoints/last.ckpt` there and continues from it with the same global step, optimizer state,
metrics file and wandb run id.

A launch first locks the run directory (a second launch is refused at once), then decides from the
checkpoint whether there is anything to do and whether the requested model is the run's; only an
accepted launch writes into the directory.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import lightning
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexModel
from s2s.training.checkpoint_io import RunCheckpointIO, remove_stale_temporaries
from s2s.training.checkpoints import resume_checkpoint
from s2s.training.code_record import CodeCommitInCheckpoint
from s2s.training.csv_metrics import MetricsRowsInCheckpoint, RunCSVLogger
from s2s.training.resume import ResumePoint, check_same_model, find_resume_point, max_steps_reached
from s2s.training.run_lock import RunLock, is_global_rank_zero
from s2s.training.token_module import TokenDuplexLightningModule
from s2s.training.wall_clock import WallClock, WallClockReport


class LaunchConfigError(ValueError):
    """A training config value that cannot work, named with what to write instead."""


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    resumed_from_step: int | None
    global_step: int
    metrics_csv: Path
    seconds: float
    trained: bool = True  # False when max_steps was already reached and nothing ran
    wall_clock: WallClockReport | None = None  # where the launch's time went (None: nothing ran)


def train(cfg: DictConfig, run_dir: str | Path) -> TrainResult:
    started = time.perf_counter()
    run_dir = Path(run_dir)
    max_steps = _max_steps(cfg)
    check_model_and_module(cfg)
    lock = RunLock.acquire(run_dir) if is_global_rank_zero() else None  # other ranks share rank 0's
    try:
        return _train(cfg, run_dir, lock, max_steps, started)
    finally:
        if lock is not None:
            lock.release()


def _train(
    cfg: DictConfig, run_dir: Path, lock: RunLock | None, max_steps: int, started: float
) -> TrainResult:
    point = find_resume_point(run_dir) if cfg.resume else None
    if point is not None and max_steps_reached(point, max_steps):
        return _nothing_to_do(point, run_dir, max_steps, started)
    lightning.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    if point is not None:
        check_same_model(point, dataclasses.asdict(model.config), run_dir)

    # The launch is accepted: from here on it writes into the run directory.
    rank_zero = lock is not None
    if rank_zero:
        lock.record_holder()
        remove_stale_temporaries(run_dir / "checkpoints")
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if point is not None:
        print(f"resuming {run_dir} from {point.checkpoint} at global step {point.global_step}")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)(model=model)
    loggers = instantiate(cfg.logger)(
        run_dir=run_dir, run_config=resolved, csv_keep_rows=point.metrics_rows if point else 0
    )
    if rank_zero:
        _report_moved_rows(loggers, point)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    wall_clock = WallClock(started)
    plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), RunCheckpointIO()]
    trainer: lightning.Trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=[*callbacks, MetricsRowsInCheckpoint(), CodeCommitInCheckpoint(), wall_clock],
        plugins=plugins,
    )
    print(
        f"model: {model.parameter_count():,} parameters; chunk {model.config.chunk}, "
        f"training chunks {list(model.config.train_chunks)}, "
        f"attention backend {model.config.attention_backend}"
    )
    if point is None and cfg.validate_first:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the untrained baseline, at step 0
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=str(point.checkpoint) if point else None,
        weights_only=True,  # RunCheckpointIO loads only tensors and plain data in any case
    )

    checkpoint = trainer.checkpoint_callback
    best = Path(checkpoint.best_model_path) if checkpoint and checkpoint.best_model_path else None
    result = TrainResult(
        run_dir=run_dir,
        last_checkpoint=resume_checkpoint(run_dir),
        best_checkpoint=best,
        resumed_from_step=point.global_step if point else None,
        global_step=trainer.global_step,
        metrics_csv=run_dir / "csv" / "metrics.csv",
        seconds=time.perf_counter() - started,
        wall_clock=wall_clock.report(),
    )
    if rank_zero:  # one report per launch, not one per DDP rank
        _report(result, loggers)
    for logger in loggers:  # close the wandb run so its files (config, summary) are complete on disk
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    return result


def _max_steps(cfg: DictConfig) -> int:
    """trainer.max_steps as an int, or an error that says what to write (Lightning's is a TypeError)."""
    value = cfg.trainer.get("max_steps", -1)
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise LaunchConfigError(
            "trainer.max_steps must be a whole number of optimizer steps, or -1 for no limit; "
            f"got {value!r}. For example: trainer.max_steps=2000"
        )
    return value


def check_model_and_module(cfg: DictConfig) -> None:
    """Model v2 trains with module v2 on token targets, model v1 with module v1 without them: a
    launch that mixes them is refused before anything is built, with the settings that go together."""
    model_class = get_class(cfg.model._target_)
    module_class = get_class(cfg.module._target_)
    token_targets = bool(cfg.data.get("token_targets", False))
    v2 = issubclass(model_class, TokenDuplexModel)
    model = f"model={_choice('model') or model_class.__name__}"
    module = f"module={_choice('module') or module_class.__name__}"
    if v2 and not issubclass(module_class, TokenDuplexLightningModule):
        raise LaunchConfigError(
            f"{model} is model v2 ({model_class.__name__}): it trains with module=v2 and "
            f"data.token_targets=true (the defaults), not {module}; for model v1 (model=tiny_v1) "
            "use experiment=v1_baseline"
        )
    if v2 and not token_targets:
        raise LaunchConfigError(
            f"{model} is model v2 ({model_class.__name__}): it trains on token targets, "
            "data.token_targets=true (the default); for model v1, which trains without them, use "
            "experiment=v1_baseline"
        )
    if issubclass(model_class, DuplexModel) and (
        issubclass(module_class, TokenDuplexLightningModule) or token_targets
    ):
        raise LaunchConfigError(
            f"{model} is model v1 ({model_class.__name__}): it needs module=v1 data.token_targets=false "
            f"(this launch has {module}, data.token_targets={str(token_targets).lower()}): use "
            "experiment=v1_baseline"
        )


def _choice(group: str) -> str | None:
    """The config group option of this launch (model=tiny_v1), when Hydra is running."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _nothing_to_do(point: ResumePoint, run_dir: Path, max_steps: int, started: float) -> TrainResult:
    print(
        f"{run_dir} is already trained to global step {point.global_step} (trainer.max_steps={max_steps}): "
        "nothing to do, and nothing was changed.\n"
        "  train further:  raise trainer.max_steps "
        f"(e.g. trainer.max_steps={max(2 * point.global_step, 1)})\n"
        "  another run:    run_name=<another name> (or resume=false to start this one over)\n"
        f"  evaluate it:    python scripts/stream_eval.py checkpoint={point.checkpoint}"
    )
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=point.checkpoint,
        best_checkpoint=point.best_checkpoint,
        resumed_from_step=point.global_step,
        global_step=point.global_step,
        metrics_csv=run_dir / "csv" / "metrics.csv",
        seconds=time.perf_counter() - started,
        trained=False,
    )


def _report_moved_rows(loggers, point: ResumePoint | None) -> None:
    for logger in loggers:
        if isinstance(logger, RunCSVLogger) and logger.experiment.moved_aside:
            rows, path = logger.experiment.moved_aside
            after = f"after global step {point.global_step}" if point else "before this fresh start"
            print(f"metrics: {rows} row(s) logged {after} by an earlier launch moved to {path}")


def _report(result: TrainResult, loggers) -> None:
    lines = [
        f"trained to global step {result.global_step} in {result.seconds:.0f} s",
        *([result.wall_clock.line()] if result.wall_clock else []),
        f"run directory:   {result.run_dir}",
        f"last checkpoint: {result.last_checkpoint}",
        f"best checkpoint: {result.best_checkpoint}",
        f"metrics (CSV):   {result.metrics_csv}",
    ]
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            lines.append(
                f"wandb run:       {logger.experiment.dir} "
                f"(`wandb sync {result.run_dir}/wandb` uploads offline runs)"
            )
    lines.append(f"samples:         {result.run_dir / 'samples'}")
    print("\n".join(lines))
