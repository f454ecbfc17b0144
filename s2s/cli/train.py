"""Train the duplex model: `s2s-train [group=option ...] [key=value ...]` (or `python scripts/train.py`).

Groups (configs/): model (tiny, base: model v2, the default; tiny_v1: model v1), module (v2, v1),
data (synth, folder), task (say_in_german, echo, reverse), trainer (cpu, gpu, ddp), logger (wandb,
tensorboard, csv, none), attention (auto, sdpa, flex, cute), experiment (named presets; v1_baseline: model v1
with its module and data settings). A model with another model's module is refused at once.
Re-running the same command resumes the run (one launch at a time per run directory); `-m key=a,b`
sweeps, one run directory and one wandb run each.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from s2s.config_dir import config_dir
from s2s.data.corpus import CorpusError
from s2s.training.checkpoints import CheckpointError
from s2s.training.resume import ResumeMismatchError
from s2s.training.run import LaunchConfigError, train
from s2s.training.run_lock import RunLockedError

# Refusals whose message says what to do: printed as one line, without a traceback.
REFUSALS = (CheckpointError, CorpusError, LaunchConfigError, ResumeMismatchError, RunLockedError)


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg, HydraConfig.get().runtime.output_dir)
    except REFUSALS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
