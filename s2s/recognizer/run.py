"""The recognizer's training job: corpus -> cached window features -> Lightning fit -> test -> artifact.

A run lives in one directory (`outputs/recognizer/<run_name>`): resolved config, checkpoints (last
and the best on validation loss), CSV metrics (wandb too with logger=wandb), metrics.json, and
`recognizer.pt`, the artifact the evaluation loads. Re-running the same command resumes from
`checkpoints/last.ckpt` (or, when training had finished, only re-scores and re-writes the artifact).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from s2s.data.corpus import CorpusError, read_record
from s2s.data.features import LogMelConfig
from s2s.recognizer.artifact import save_recognizer
from s2s.recognizer.data import Jitter, RecognizerData, WindowDataset
from s2s.recognizer.evaluate import evaluate_windows, summary_lines
from s2s.recognizer.features import REFERENCE, Variant, VariantPlan, WindowFeatures, split_features
from s2s.recognizer.module import RecognizerModule
from s2s.recognizer.recognizer import Recognizer
from s2s.recognizer.vocabulary import vocabulary_from_task
from s2s.training.checkpoints import check_checkpoint, load_checkpoint, resume_checkpoint

log = logging.getLogger(__name__)


@dataclass
class RecognizerResult:
    run_dir: Path
    artifact: Path
    figures: dict
    seconds: float


def corpus_task(data_dir: Path) -> dict:
    """The corpus record of `data_dir`, checked to be complete; says how to make one when it is not."""
    make = f"make it with `python scripts/make_data.py` (corpus.out_dir={data_dir} for another folder)"
    try:
        record = read_record(data_dir)
    except CorpusError as error:
        raise CorpusError(f"{error}; or {make}") from error
    if record is None:
        raise CorpusError(f"no corpus in {data_dir} ({data_dir / 'corpus.json'} does not exist); {make}")
    if not record.get("complete"):
        raise CorpusError(f"the corpus in {data_dir} is incomplete (an interrupted run?); finish it: {make}")
    return record


def train_recognizer(cfg: DictConfig, run_dir: str | Path) -> RecognizerResult:
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lightning.seed_everything(cfg.seed, workers=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    data_dir = Path(cfg.data_dir)
    record = corpus_task(data_dir)
    task = record["recipe"]["task"]
    vocabulary = vocabulary_from_task(task)
    log_mel = LogMelConfig(**cfg.log_mel)
    features = _features(cfg, data_dir, record, log_mel)
    train, val, test = features["train"], features["val"], features["test"]
    log.info(
        f"task {task.get('name')!r}, vocabulary {list(vocabulary.words)}; windows: train {len(train)} "
        f"(with variants), val {len(val)}, test {len(test)}"
    )

    reference = train.where(variant=REFERENCE)
    frames = torch.cat([m.float() for m in reference.mels])
    val_names = list(dict.fromkeys(val.variants))
    module = RecognizerModule(
        model={**OmegaConf.to_container(cfg.model), "classes": vocabulary.size, "n_mels": log_mel.n_mels},
        vocabulary=list(vocabulary.words),
        optimizer=OmegaConf.to_container(cfg.optimizer),
        val_names=val_names,
    )
    module.model.set_normalization(frames.mean(dim=0), frames.std(dim=0))
    jitter = Jitter(**OmegaConf.to_container(cfg.jitter))
    datamodule = RecognizerData(
        train=WindowDataset(train, vocabulary, jitter, instantiate(cfg.augment), seed=cfg.seed),
        val={name: WindowDataset(val.where(variant=name), vocabulary) for name in val_names},
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    log.info(f"recognizer: {module.model.parameter_count():,} parameters")

    resolved = OmegaConf.to_container(cfg, resolve=True)
    loggers = instantiate(cfg.logger)(run_dir=run_dir, run_config=resolved)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer: lightning.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks
    )
    resume_from = resume_checkpoint(run_dir) if cfg.resume else None
    if resume_from is not None:
        log.info(f"resuming {run_dir} from {resume_from} at global step {check_checkpoint(resume_from)}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - started

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    if best:  # the weights that scored best on validation, not the last ones
        state = load_checkpoint(best)["state_dict"]
        module.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    recognizer = Recognizer(module.model.cpu(), vocabulary, log_mel, task, source=str(run_dir))
    figures = {
        "test": evaluate_windows(recognizer, test),
        "val": evaluate_windows(recognizer, val),
        "parameters": module.model.parameter_count(),
        "global_step": trainer.global_step,
        "best_checkpoint": best,
        "seconds": round(time.perf_counter() - started, 1),
        "train_windows": len(reference),
        "train_entries": len(train),
    }
    artifact = save_recognizer(
        run_dir / "recognizer.pt", module.model, vocabulary, log_mel, task, figures=figures,
        training={"config": resolved, "corpus": str(data_dir), "corpus_splits": record.get("splits")},
    )  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
    for logger in loggers:
        logger.log_metrics(_flat(figures["test"], "test"), step=trainer.global_step)
        logger.save()  # the CSV logger buffers rows until saved
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    result = RecognizerResult(run_dir, artifact, figures, time.perf_counter() - started)
    lines = summary_lines(figures["test"], "test")
    lines += [
        f"trained to step {trainer.global_step}; features + training {train_seconds:.0f} s, whole job "
        f"{result.seconds:.0f} s; {figures['parameters']:,} parameters",
        f"artifact:      {artifact} ({artifact.stat().st_size / 1e6:.2f} MB)",
        f"run directory: {run_dir} (metrics.json, csv/metrics.csv, checkpoints/)",
    ]
    for line in lines:  # through logging: Hydra writes them to the console and to the run's log file
        log.info(line)
    return result


def _features(
    cfg: DictConfig, data_dir: Path, record: dict, log_mel: LogMelConfig
) -> dict[str, WindowFeatures]:
    """Train: reference + random round trips of complete replies, with margins for jitter. Val:
    reference and plain round trip of complete replies. Test: those, streamed round trip, cut-off replies."""
    trip = cfg.round_trip
    stream = Variant(vocoder=True, stream_frames=trip.stream_frames)
    plans = {
        "train": (VariantPlan(
            random_copies=trip.copies, smoothing=tuple(trip.smoothing),
            streamed_fraction=trip.streamed_fraction, stream_frames=trip.stream_frames,
            reply_pad=trip.reply_pad,
        ), ("reply",), cfg.windows.margin),
        "val": (VariantPlan(fixed=(Variant(), Variant(vocoder=True))), ("reply",), 0.0),
        "test": (
            VariantPlan(fixed=(Variant(), Variant(vocoder=True), stream)), ("reply", "cut-off reply"), 0.0
        ),
    }  # fmt: skip
    key = {"recipe": record["recipe"], "splits": record["splits"], "folder": str(data_dir.resolve())}
    out = {}
    for split, (plan, kinds, margin) in plans.items():
        if not (data_dir / split).is_dir():
            raise CorpusError(
                f"the corpus in {data_dir} has no {split}/ folder; re-make it with scripts/make_data.py"
            )
        began = time.perf_counter()
        out[split] = split_features(
            data_dir / split, log_mel, plan, kinds=kinds, margin=margin, seed=cfg.seed,
            iterations=trip.iterations, workers=cfg.workers, cache_dir=cfg.cache_dir, cache_key=key,
            progress=cfg.progress,
        )  # fmt: skip
        log.info(
            f"features {split}: {len(out[split])} windows x variants in {time.perf_counter() - began:.0f} s"
        )
        if not len(out[split]):
            raise CorpusError(
                f"{data_dir / split} holds no complete replies to train or score a recognizer on"
            )
    return out


def _flat(scores: dict, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{key}/{name.replace(' (', '/').replace(')', '').replace(' ', '_')}": float(value)
        for name, record in scores.items()
        for key, value in record.items()
        if isinstance(value, int | float)
    }
