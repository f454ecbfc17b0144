"""The recognizer's vocabulary comes from the task record, for every task config."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from s2s.data.tasks import GERMAN_DIGITS, say_in_german
from s2s.recognizer.vocabulary import Vocabulary, VocabularyError, vocabulary_from_task

TASKS = Path(__file__).resolve().parents[2] / "configs" / "task"


def _task(name: str) -> dict:
    return instantiate(OmegaConf.load(TASKS / f"{name}.yaml")).describe()


def test_vocabulary_is_the_tasks_system_words():
    assert vocabulary_from_task(say_in_german().describe()).words == GERMAN_DIGITS
    assert vocabulary_from_task(_task("say_in_german")).words == GERMAN_DIGITS
    assert vocabulary_from_task(_task("echo")).words[:3] == ("zero", "one", "two")
    assert vocabulary_from_task(_task("reverse")).words == GERMAN_DIGITS
    # a task that names its words directly; repeated words once, first-seen order
    assert vocabulary_from_task({"system_words": ["ja", "nein", "ja"]}).words == ("ja", "nein")


def test_encode_decode_round_trip_and_the_blank():
    vocabulary = vocabulary_from_task(_task("say_in_german"))
    assert vocabulary.size == 11
    ids = vocabulary.encode("drei null fünf fünf")
    assert ids == [4, 1, 6, 6]
    assert vocabulary.decode(ids) == ["drei", "null", "fünf", "fünf"]
    with pytest.raises(VocabularyError, match="different tasks"):
        vocabulary.encode(["three"])


def test_records_without_system_words_are_refused():
    with pytest.raises(VocabularyError, match="system_digit_words"):
        vocabulary_from_task({"class": "Other", "name": "x"})
    with pytest.raises(VocabularyError, match="list of words"):
        vocabulary_from_task({"system_digit_words": "eins zwei"})
    with pytest.raises(VocabularyError, match="single non-empty"):
        Vocabulary(("eins", "zwei drei"))
