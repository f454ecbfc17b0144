"""Train the duplex model: `python scripts/train.py [group=option ...] [key=value ...]`.

Groups (configs/): model (tiny, base), data (synth, folder), trainer (cpu, gpu, ddp), logger
(wandb, csv, none), attention (auto, sdpa, flex, cute), experiment (named presets). Re-running the
same command resumes the run; `-m key=a,b` sweeps, one run directory and one wandb run each.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from s2s.training.run import train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
