"""A corpus with enough dialogues for several batches per epoch (the resume and DDP tests; ~3 s)."""

import pytest
from tiny_corpus import tiny_config


@pytest.fixture(scope="session")
def eight_dialogue_corpus(tmp_path_factory):
    """8 train dialogues (one crop each per epoch), 2 val (one per rank under 2-process DDP), 1 test."""
    from s2s.data.corpus import generate_corpus
    from s2s.data.tasks import say_in_german

    out_dir = tmp_path_factory.mktemp("corpus8")
    hours = {"train": 0.05, "val": 0.006, "test": 0.006}
    return generate_corpus(tiny_config(out_dir, hours=hours), say_in_german(), workers=2, progress=False)
