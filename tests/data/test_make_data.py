"""configs/make_data.yaml and its task group, and scripts/make_data.py end to end."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from s2s.data.synth import CorpusConfig
from s2s.data.tasks import DialogueTask, say_in_german

ROOT = Path(__file__).resolve().parents[2]
TASKS = sorted(p.stem for p in (ROOT / "configs" / "task").glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="make_data", overrides=list(overrides))


def test_yaml_defaults_equal_the_code_defaults():
    """The YAML spells the recipe out for readers; it must not drift from the dataclass defaults."""
    cfg = _compose()
    assert CorpusConfig.from_dict(OmegaConf.to_container(cfg.corpus)) == CorpusConfig()
    assert instantiate(cfg.task) == say_in_german()


@pytest.mark.parametrize("task_name", TASKS)
def test_every_task_config_instantiates_and_speaks(task_name):
    task = instantiate(_compose(f"task={task_name}").task)
    assert isinstance(task, DialogueTask) and task.name == task_name
    rng = np.random.default_rng()
    for _ in range(20):
        exchange = task.sample(rng)
        assert 1 <= len(exchange.user_words) <= 4 and len(exchange.reply_words) == len(exchange.user_words)
    assert len(TASKS) >= 3


def test_make_data_script_end_to_end(tmp_path):
    out_dir = tmp_path / "echo"
    command = [
        sys.executable, str(ROOT / "scripts" / "make_data.py"), "task=echo", f"corpus.out_dir={out_dir}",
        "corpus.hours.train=0.005", "corpus.hours.val=0", "corpus.hours.test=0",
        "corpus.timing.seconds=[20.0,21.0]", "progress=false", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train 1 dialogues" in result.stdout and "wall time" in result.stdout
    manifest = json.loads((out_dir / "train" / "train_00000.json").read_text())
    assert manifest["task"] == "echo" and manifest["system_voice"]["name"] == "en-gb-x-rp+f2"
    replies = [s for s in manifest["segments"] if s["speaker"] == "system"]
    turns = {s["exchange"]: s["text"] for s in manifest["segments"] if s["kind"] == "turn"}
    assert replies and all(s["text"] == turns[s["exchange"]] for s in replies)

    again = subprocess.run([*command[:-1], f"hydra.run.dir={tmp_path / 'run2'}", "corpus.seed=5"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert again.returncode != 0 and "other settings" in again.stderr


def test_corpus_config_from_plain_values_checks_names():
    with pytest.raises(TypeError):
        CorpusConfig.from_dict({"timing": {"no_such_field": 1}})
    with pytest.raises(ValueError, match="unknown splits"):
        CorpusConfig(hours={"training": 1.0})
    assert dataclasses.replace(CorpusConfig(), seed=3).record()["seed"] == 3
