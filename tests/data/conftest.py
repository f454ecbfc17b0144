"""A tiny synthetic corpus shared by the data tests (made once per session, ~10 s on 2 cores)."""

import pytest
from tiny_corpus import tiny_config

from s2s.data.corpus import generate_corpus
from s2s.data.tasks import say_in_german


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("corpus")
    return generate_corpus(tiny_config(out_dir), say_in_german(), workers=2, progress=False)
