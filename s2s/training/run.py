"""The training job: build everything from the Hydra config, resume when the run was cut short, fit.

Each run lives in one directory (`outputs/train/<run_name>` by default): resolved config,
checkpoints (last + best on validation loss), CSV metrics, the wandb offline run, and audio/image
samples. Re-running the same command finds `checkpoints/last.ckpt` there and continues from it with
the same global step, optimizer state and wandb run id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from s2s.training.checkpoints import check_checkpoint, resume_checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    resumed_from_step: int | None
    global_step: int
    metrics_csv: Path
    seconds: float


def train(cfg: DictConfig, run_dir: str | Path) -> TrainResult:
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lightning.seed_everything(cfg.seed, workers=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    resume_from, resumed_step = None, None
    if cfg.resume:
        resume_from = resume_checkpoint(run_dir)
        if resume_from is not None:
            resumed_step = check_checkpoint(resume_from)
            print(f"resuming {run_dir} from {resume_from} at global step {resumed_step}")

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module)(model=model)
    loggers = instantiate(cfg.logger)(run_dir=run_dir, run_config=resolved)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer: lightning.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks
    )
    print(
        f"model: {model.parameter_count():,} parameters; chunk {model.config.chunk}, "
        f"training chunks {list(model.config.train_chunks)}, "
        f"attention backend {model.config.attention_backend}"
    )
    if resume_from is None and cfg.validate_first:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the untrained baseline, at step 0
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)

    checkpoint = trainer.checkpoint_callback
    best = Path(checkpoint.best_model_path) if checkpoint and checkpoint.best_model_path else None
    last = resume_checkpoint(run_dir)
    result = TrainResult(
        run_dir=run_dir,
        last_checkpoint=last,
        best_checkpoint=best,
        resumed_from_step=resumed_step,
        global_step=trainer.global_step,
        metrics_csv=run_dir / "csv" / "metrics.csv",
        seconds=time.perf_counter() - started,
    )
    _report(result, loggers)
    for logger in loggers:  # close the wandb run so its files (config, summary) are complete on disk
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    return result


def _report(result: TrainResult, loggers) -> None:
    lines = [
        f"trained to global step {result.global_step} in {result.seconds:.0f} s",
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
