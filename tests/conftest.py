"""Shared test set-up: GPU tests are skipped where no CUDA device is present; a tiny synthetic
corpus is made once per session for the data and training tests (~2 s on 2 cores)."""

import pytest
import torch
from tiny_corpus import tiny_config


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def generator() -> torch.Generator:
    """A fresh random seed per test run, printed on failure through the test id's repr."""
    g = torch.Generator()
    g.manual_seed(torch.seed() % (2**31))
    return g


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    from s2s.data.corpus import generate_corpus
    from s2s.data.tasks import say_in_german

    out_dir = tmp_path_factory.mktemp("corpus")
    return generate_corpus(tiny_config(out_dir), say_in_german(), workers=2, progress=False)
