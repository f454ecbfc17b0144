"""Train the reply recognizer: `s2s-train-recognizer [data_dir=data/synth] [key=value ...]`
(or `python scripts/train_recognizer.py`).

A word-level CTC model over the task's system words, trained on the reference system channel of
the corpus (and its vocoder round trip), so that the streaming evaluation can say whether the
duplex model said the right words. Writes `outputs/recognizer/<run_name>/recognizer.pt`.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from s2s.config_dir import config_dir
from s2s.recognizer.run import train_recognizer

OmegaConf.register_new_resolver("basename", lambda path: Path(str(path)).name, replace=True)


@hydra.main(config_path=str(config_dir()), config_name="train_recognizer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train_recognizer(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
