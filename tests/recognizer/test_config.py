"""configs/train_recognizer.yaml composes with every logger option and builds its objects."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from s2s.recognizer.augment import OnlineAugment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("logger", ["csv", "none", "wandb"])
def test_config_composes_and_instantiates(logger, tmp_path):
    OmegaConf.register_new_resolver("basename", lambda path: Path(str(path)).name, replace=True)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train_recognizer", overrides=[f"logger={logger}", "data_dir=data/echo"])
    assert cfg.run_name == "ctc-echo"
    assert isinstance(instantiate(cfg.augment), OnlineAugment)
    assert cfg.logger.kind == logger
    if logger == "wandb":
        assert cfg.logger.name == "ctc-echo"  # the shared logger config names the run after run_name
    else:
        loggers = instantiate(cfg.logger)(run_dir=tmp_path)
        assert [type(x).__name__ for x in loggers] == (
            [] if logger == "none" else [type(loggers[0]).__name__]
        )
        assert logger == "none" or "CSV" in type(loggers[0]).__name__
