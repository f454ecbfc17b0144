"""Shared set-up of the server tests: a tiny random-weight model saved as an artifact once per module."""

import pytest
import torch

from s2s.data.tasks import say_in_german
from s2s.data.tokens import BOS
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.pretrained import save_pretrained

SIZES = {"dim": 32, "heads": 2, "kv_heads": 1, "encoder_layers": 1, "decoder_layers": 1}


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    """The directory of a tiny token (v2) model with random weights, BOS made likely so it opens replies."""
    torch.manual_seed(7)
    model = TokenDuplexModel(TokenDuplexConfig(**SIZES)).eval()
    with torch.no_grad():  # an untrained model barely opens replies; make BOS likely
        model.token_head.bias[BOS] += 3.0
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "v2", task=say_in_german().describe())
