"""Shared test set-up: GPU tests are skipped where no CUDA device is present."""

import pytest
import torch


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
