"""Every model config instantiates on its own (no Hydra composition), with the attention group's defaults."""

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL_CONFIGS = sorted((CONFIGS / "model").glob("*.yaml"))


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_model_config_instantiates_alone(path):
    attention = OmegaConf.load(CONFIGS / "attention" / "auto.yaml")
    model = hydra.utils.instantiate(OmegaConf.load(path))
    config = model.config
    assert config.chunk == attention.chunk and tuple(config.train_chunks) == tuple(attention.train_chunks)
    assert config.left_chunks == attention.left_chunks and config.attention_backend == attention.backend
    assert sum(p.numel() for p in model.parameters()) > 0
    composed = OmegaConf.merge({"attention": {"chunk": 2, "left_chunks": 3}}, {"model": OmegaConf.load(path)})
    chunked = hydra.utils.instantiate(composed.model)
    assert (chunked.config.chunk, chunked.config.left_chunks) == (2, 3), "the attention group still wins"


def test_there_are_model_configs():
    assert {"tiny", "base", "tiny_v1"} <= {p.stem for p in MODEL_CONFIGS}
