"""Synthesize the offline dialogue corpus: `s2s-make-data [key=value ...]` (or `python scripts/make_data.py`).

Every option is in configs/make_data.yaml; the task is the config group configs/task/.
"""

import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from s2s.config_dir import config_dir
from s2s.data.corpus import CorpusError, generate_corpus
from s2s.data.synth import CorpusConfig


@hydra.main(config_path=str(config_dir()), config_name="make_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    config = CorpusConfig.from_dict(OmegaConf.to_container(cfg.corpus, resolve=True))
    task = hydra.utils.instantiate(cfg.task)
    try:
        summary = generate_corpus(
            config, task, workers=cfg.workers, overwrite=cfg.overwrite, progress=cfg.progress
        )
    except CorpusError as error:  # its message says what to do: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(summary.describe())
    print(f"wall time {time.perf_counter() - started:.1f} s; recipe in {summary.out_dir / 'corpus.json'}")


if __name__ == "__main__":
    main()
