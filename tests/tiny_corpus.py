"""The tiny synthetic corpus recipe shared by the data tests (imported by conftest.py and tests)."""

import dataclasses

from s2s.data.synth import CorpusConfig, DialogueTiming, UserVoices

# Short dialogues, and pauses and barge-ins far more often than the default, so that every kind of
# event occurs in a corpus of a few dialogues.
TINY_TIMING = DialogueTiming(seconds=(20.0, 24.0), pause_probability=0.6, barge_in_probability=0.5)
TINY_HOURS = {"train": 0.012, "val": 0.006, "test": 0.012}
TINY_VOICES = UserVoices(test_held_out_fraction=1.0)  # every test dialogue has an unseen voice


def tiny_config(out_dir, **changes) -> CorpusConfig:
    return dataclasses.replace(
        CorpusConfig(out_dir=str(out_dir), hours=TINY_HOURS, timing=TINY_TIMING, voices=TINY_VOICES),
        **changes,
    )
