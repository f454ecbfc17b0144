"""Streaming evaluation of a checkpoint: `s2s-eval checkpoint=PATH [key=value ...]`
(or `python scripts/stream_eval.py`).

Writes metrics.json, metrics.md, stereo wav (user | model) and PNG plots to the run directory and,
unless wandb.enabled=false, the same to an offline wandb run there. A run that fails leaves no
directory behind.
"""

import importlib.util
import logging
import shutil
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from s2s.config_dir import config_dir
from s2s.models.token_sampling import SamplingConfig
from s2s.streaming.evaluate import EvalOptions, evaluate

log = logging.getLogger("stream_eval")


@hydra.main(config_path=str(config_dir()), config_name="stream_eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        options = EvalOptions(
            chunk=cfg.chunk, streams=cfg.streams, max_dialogues=cfg.max_dialogues, device=cfg.device,
            precision=cfg.precision, threads=cfg.threads, recognizer=cfg.recognizer,
            energy_threshold_db=cfg.energy_threshold_db, window=cfg.window, mcd_seconds=cfg.mcd_seconds,
            examples=cfg.examples, progress=cfg.progress,
            sampling=SamplingConfig(
                **{k: v for k, v in cfg.sampling.items() if k not in ("state_gain", "onset_quantile",
                                                                       "stop_gain")}
            ),
            state_gain=cfg.sampling.state_gain, onset_quantile=cfg.sampling.get("onset_quantile"),
            stop_gain=cfg.sampling.get("stop_gain"),
            history_seconds=cfg.history_seconds, engine=cfg.get("engine", "static"),
            cuda_graph=bool(cfg.get("cuda_graph", False)),
        )  # fmt: skip
        report = evaluate(cfg.checkpoint, cfg.data_dir, out_dir, options)
    except BaseException:
        if not (out_dir / "metrics.json").exists():
            logging.shutdown()
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    log.info("\n%s", (out_dir / "metrics.md").read_text())
    log.info(
        "evaluated %d dialogues in %.0f s; report in %s", report["dialogues"], report["wall_seconds"], out_dir
    )
    if cfg.wandb.enabled:
        _log_to_wandb(cfg, out_dir, report)


def _log_to_wandb(cfg: DictConfig, out_dir: Path, report: dict) -> None:
    if importlib.util.find_spec("wandb") is None:
        warnings.warn(
            f'wandb is not installed (pip install "s2s[wandb]"), so nothing goes to wandb; the report is in '
            f"{out_dir}. wandb.enabled=false silences this",
            stacklevel=2,
        )
        return
    try:
        import wandb

        setup = {
            k: v for k, v in report.items() if k not in ("duplex", "compute", "quality", "content", "files")
        }
        run = wandb.init(
            dir=str(out_dir), project=cfg.wandb.project, mode=cfg.wandb.mode, job_type="stream_eval",
            config=setup, settings=wandb.Settings(console="off", silent=True),
        )  # fmt: skip
        rows = [line.strip("|").split("|") for line in (out_dir / "metrics.md").read_text().splitlines()]
        cells = [[c.strip() for c in r] for r in rows if len(r) == 3 and "---" not in r[0]]
        table = wandb.Table(columns=["metric", "value", "reference or energy"], data=cells)
        media = {"metrics": table}
        for path in map(Path, report["files"]):
            media[f"examples/{path.stem}"] = (
                wandb.Image(str(path)) if path.suffix == ".png" else wandb.Audio(str(path))
            )
        run.log(media)
        summary = {key: report[key] for key in ("duplex", "compute", "quality") if key in report}
        if "content" in report:
            summary["content"] = {k: v for k, v in report["content"].items() if k != "replies"}
        run.summary.update(summary)
        run.finish()
        log.info("wandb (%s) run in %s", cfg.wandb.mode, out_dir / "wandb")
    except Exception as error:  # the report on disk is complete; tracking must not fail the evaluation
        warnings.warn(f"wandb logging failed ({error!r}); the report is in {out_dir}", stacklevel=2)


if __name__ == "__main__":
    main()
