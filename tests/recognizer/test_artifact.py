"""The artifact: a round trip through weights_only loading, crafted and foreign files refused, task checks."""

import pickle
from dataclasses import asdict

import pytest
import torch

from s2s.data.features import LogMelConfig
from s2s.data.tasks import say_in_german
from s2s.recognizer.artifact import (
    VERSION,
    RecognizerArtifactError,
    load_recognizer,
    read_artifact,
    save_recognizer,
)
from s2s.recognizer.model import CTCRecognizer, RecognizerConfig
from s2s.recognizer.recognizer import TaskMismatchError
from s2s.recognizer.vocabulary import vocabulary_from_task


def _saved(tmp_path, generator, **task_changes):
    task = {**say_in_german().describe(), **task_changes}
    vocabulary = vocabulary_from_task(task)
    torch.manual_seed(generator.initial_seed())
    model = CTCRecognizer(RecognizerConfig(classes=vocabulary.size, channels=32, gru_hidden=16)).eval()
    model.set_normalization(torch.randn(80, generator=generator), torch.rand(80, generator=generator) + 0.5)
    path = save_recognizer(
        tmp_path / "recognizer.pt", model, vocabulary, LogMelConfig(), task, figures={"test": {"x": 1.0}}
    )
    return path, model, task


def test_round_trip_loads_with_weights_only_and_gives_the_same_outputs(tmp_path, generator):
    seed = generator.initial_seed()
    path, model, task = _saved(tmp_path, generator)
    record = torch.load(path, weights_only=True)  # plain data and tensors only
    assert record["format"] == "s2s-recognizer" and record["version"] == VERSION
    assert record["log_mel"] == asdict(LogMelConfig()) and record["task"] == task
    recognizer = load_recognizer(path)
    assert recognizer.vocabulary.words == tuple(task["system_digit_words"])
    assert recognizer.log_mel_config == LogMelConfig()
    assert recognizer.task == task and recognizer.figures == {"test": {"x": 1.0}}
    mel, lengths = torch.randn(3, 120, 80, generator=generator), torch.tensor([120, 77, 9])
    with torch.no_grad():
        expected, _ = model(mel, lengths)
        got, _ = recognizer.model(mel, lengths)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"seed {seed}")


class _Payload:
    """Unpickling this would create a file: the proof that loading ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_payload_is_not_executed_and_is_refused(tmp_path, generator):
    path, _, _ = _saved(tmp_path, generator)
    record = torch.load(path, weights_only=True)
    marker = tmp_path / "executed"
    record["task"] = _Payload(marker)
    crafted = tmp_path / "crafted.pt"
    torch.save(record, crafted)
    with pytest.raises(RecognizerArtifactError, match=r"refusing to load .*plain data and tensors"):
        load_recognizer(crafted)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"  # a bare pickle, not even a torch zip file
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RecognizerArtifactError):
        load_recognizer(raw)
    assert not marker.exists()


def test_missing_foreign_and_old_files_are_named_with_the_fix(tmp_path, generator):
    with pytest.raises(RecognizerArtifactError, match=r"does not exist.*train_recognizer\.py"):
        load_recognizer(tmp_path / "nothing.pt")
    torch.save({"state_dict": {}, "global_step": 3}, tmp_path / "last.ckpt")
    with pytest.raises(RecognizerArtifactError, match=r"not a recognizer artifact.*Lightning checkpoint"):
        load_recognizer(tmp_path / "last.ckpt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(RecognizerArtifactError, match="not a readable torch file"):
        load_recognizer(tmp_path / "text.pt")
    path, _, _ = _saved(tmp_path, generator)
    record = torch.load(path, weights_only=True)
    torch.save({**record, "version": VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(RecognizerArtifactError, match=f"version {VERSION + 1}.*Retrain"):
        read_artifact(tmp_path / "future.pt")
    torch.save({**record, "state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(RecognizerArtifactError, match="consistent"):
        load_recognizer(tmp_path / "empty.pt")


def test_task_mismatch_is_refused_naming_the_fields(tmp_path, generator):
    path, _, task = _saved(tmp_path, generator)
    recognizer = load_recognizer(path)
    recognizer.check_task(task)
    recognizer.check_task({"format": "s2s-corpus/1", "recipe": {"task": task}})  # a whole corpus.json
    # the reverse task says the same words in the same voice: the recognizer reads it
    recognizer.check_task({**task, "name": "reverse", "order": "reversed"})
    echo = {
        **task,
        "name": "echo",
        "system_digit_words": [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
        ],
        "system_voice": {"name": "en-gb-x-rp+f2", "rate": 170, "pitch": 55, "pitch_range": 50},
    }
    with pytest.raises(TaskMismatchError, match="'echo'") as error:
        recognizer.check_task(echo)
    message = str(error.value)
    assert "system_digit_words" in message and "system_voice" in message and "train_recognizer.py" in message
    assert "min_digits" not in message
    with pytest.raises(TaskMismatchError, match=r"max_digits \(recognizer: 4, corpus: 6\)"):
        recognizer.check_task({**task, "max_digits": 6})
