"""The commands find their Hydra configs from the package: the clone's configs/ here, the wheel's
s2s/_configs when installed (tests/cli/test_installed_wheel.py builds one)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s2s import config_dir as module
from s2s.config_dir import ConfigDirError, config_dir

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "stream_eval", "make_data", "train_recognizer")  # s2s/cli/<name>.py, configs/<name>.yaml


def test_a_clone_uses_its_configs_folder():
    assert config_dir() == ROOT / "configs"


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_config_composes_from_the_found_tree(name):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=name)
    own = set(OmegaConf.load(config_dir() / f"{name}.yaml")) - {"defaults", "hydra"}
    assert own and own <= set(cfg), f"{name}.yaml's own keys are missing from its composition"
    source = (ROOT / "s2s" / "cli" / f"{name}.py").read_text()
    assert f'config_name="{name}"' in source and "config_path=str(config_dir())" in source


def test_the_installed_copy_wins_over_the_clone(tmp_path, monkeypatch):
    (tmp_path / "train.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(module, "INSTALLED", tmp_path)
    assert config_dir() == tmp_path


def test_no_tree_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "INSTALLED", tmp_path / "installed")
    monkeypatch.setattr(module, "CLONE", tmp_path / "clone")
    with pytest.raises(ConfigDirError, match=r"installed.*clone.*pip install"):
        config_dir()


def test_the_wheel_carries_every_config_file():
    """pyproject.toml packages `**/*.yaml`: a config of another kind would be left out of the wheel."""
    files = [p for p in (ROOT / "configs").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files and [p for p in files if p.suffix != ".yaml"] == []
    assert '"s2s._configs" = ["**/*.yaml"]' in (ROOT / "pyproject.toml").read_text()
