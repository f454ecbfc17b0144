"""Streaming evaluation of a checkpoint: `python scripts/stream_eval.py checkpoint=PATH [key=value ...]`.

Writes metrics.json, metrics.md, stereo wav (user | model) and PNG plots to the run directory and,
unless wandb.enabled=false, the same to an offline wandb run there.
"""

import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from s2s.streaming.evaluate import evaluate


@hydra.main(config_path="../configs", config_name="stream_eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    report = evaluate(
        cfg.checkpoint, cfg.data_dir, out_dir, chunk=cfg.chunk, streams=cfg.streams,
        max_dialogues=cfg.max_dialogues,
        device=cfg.device, energy_threshold_db=cfg.energy_threshold_db, window=cfg.window,
        mcd_seconds=cfg.mcd_seconds, examples=cfg.examples,
    )  # fmt: skip
    print((out_dir / "metrics.md").read_text())
    print(f"evaluated {report['dialogues']} dialogues in {report['wall_seconds']:.0f} s; report in {out_dir}")
    if cfg.wandb.enabled:
        _log_to_wandb(cfg, out_dir, report)


def _log_to_wandb(cfg: DictConfig, out_dir: Path, report: dict) -> None:
    try:
        import wandb

        setup = {k: v for k, v in report.items() if k not in ("duplex", "compute", "quality", "files")}
        run = wandb.init(
            dir=str(out_dir), project=cfg.wandb.project, mode=cfg.wandb.mode, job_type="stream_eval",
            config=setup, settings=wandb.Settings(console="off", silent=True),
        )  # fmt: skip
        rows = [line.strip("|").split("|") for line in (out_dir / "metrics.md").read_text().splitlines()]
        table = wandb.Table(columns=["metric", "from speaking probability", "from output energy"],
                            data=[[c.strip() for c in r] for r in rows[2:] if len(r) == 3])  # fmt: skip
        media = {"metrics": table}
        for path in map(Path, report["files"]):
            media[f"examples/{path.stem}"] = (
                wandb.Image(str(path)) if path.suffix == ".png" else wandb.Audio(str(path))
            )
        run.log(media)
        run.summary.update(
            {"duplex": report["duplex"], "compute": report["compute"], "quality": report["quality"]}
        )
        run.finish()
        print(f"wandb ({cfg.wandb.mode}) run in {out_dir / 'wandb'}")
    except Exception as error:  # the report on disk is complete; tracking must not fail the evaluation
        warnings.warn(f"wandb logging failed ({error!r}); the report is in {out_dir}", stacklevel=2)


if __name__ == "__main__":
    main()
