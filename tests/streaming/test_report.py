"""The evaluation's content scoring over reply windows: which stretch of the model's audio is read
for which reply, the cut-off rule, onsets, and the reference ceiling beside it."""

import numpy as np
import pytest
import torch

from s2s.data.manifest import Manifest, Segment
from s2s.models.config import DuplexConfig
from s2s.streaming import report
from s2s.streaming.runner import StreamedDialogue

RATE = 16000
WORDS = ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")
CONFIG = DuplexConfig()


class AmplitudeReader:
    """A transparent recognizer for constructed audio: every burst of constant amplitude a/10 is the
    word WORDS[a - 1]. It reads whatever window it is given, so the test sees the windows."""

    def transcribe(self, windows, sample_rate=RATE):
        assert sample_rate == RATE
        heard = []
        for audio in windows:
            levels = np.round(np.abs(np.asarray(audio)) * 10).astype(int)
            starts = np.flatnonzero((levels > 0) & (np.concatenate([[0], levels[:-1]]) != levels))
            heard.append([WORDS[levels[i] - 1] for i in starts])
        return heard


def _say(track, start, words, seconds=0.3):
    for n, word in enumerate(words):
        first = int((start + n * seconds) * RATE)
        track[first : first + int(0.25 * RATE)] = (WORDS.index(word) + 1) / 10


def _segment(speaker, kind, start, end, text, exchange):
    return Segment(speaker, kind, int(start * RATE), int(end * RATE), text, exchange, RATE)


def _dialogue(model_audio, reference_audio, speaking):
    seconds = len(model_audio) / RATE
    segments = (
        _segment("user", "turn", 1.0, 2.0, "one two", 0),
        _segment("system", "reply", 2.4, 3.0, "eins zwei", 0),
        _segment("user", "turn", 4.0, 5.0, "three four five", 1),
        _segment("system", "cut-off reply", 5.3, 5.95, "drei vier fünf", 1),
        _segment("user", "barge-in", 5.8, 6.1, "stop", 1),
        _segment("user", "turn", 8.0, 9.0, "six", 2),
    )
    manifest = Manifest("constructed", RATE, int(seconds * RATE), segments)
    return StreamedDialogue(
        name="constructed", user=np.zeros(len(model_audio), np.float32), reference=reference_audio,
        mel=np.zeros((len(speaking) * 4, 80), np.float32), speaking=speaking, audio=model_audio,
        feedback=torch.zeros(len(speaking), CONFIG.feedback_dim), manifest=manifest, sample_rate=RATE,
    )  # fmt: skip


def test_reply_windows_read_the_right_stretch_of_audio():
    seconds = 10.0
    model = np.zeros(int(seconds * RATE), np.float32)
    reference = np.zeros_like(model)
    _say(reference, 2.4, ["eins", "zwei"])
    _say(reference, 5.3, ["drei", "vier"])  # cut off after two words
    _say(model, 1.5, ["neun"])  # during the user's turn: before the window, not read
    _say(model, 2.6, ["eins", "zwei"])  # the right reply, 0.6 s after the end of turn
    _say(model, 5.2, ["drei", "vier"])  # stops 0.1 s after the barge-in at 5.8: inside the 1 s rule
    _say(model, 7.2, ["acht"])  # 1.4 s after the barge-in: outside the cut-off window
    speaking = np.zeros(int(seconds * 25), np.float32)
    speaking[65:80] = 0.9  # 2.6 s - 3.2 s
    speaking[130:146] = 0.9  # 5.2 s - 5.84 s
    result = report.reply_content([_dialogue(model, reference, speaking)], CONFIG, AmplitudeReader())

    rows = result["replies"]
    assert [r["expected"] for r in rows] == [["eins", "zwei"], ["drei", "vier", "fünf"]]
    assert [r["recognized"] for r in rows] == [["eins", "zwei"], ["drei", "vier"]]
    assert [r["reference_recognized"] for r in rows] == [["eins", "zwei"], ["drei", "vier"]]
    assert rows[0]["exact"] and not rows[1]["exact"] and rows[1]["prefix"] and rows[1]["cut_off"]
    assert rows[0]["onset"] == pytest.approx(0.6) and rows[0]["duration"] == pytest.approx(0.6)
    assert rows[1]["onset"] == pytest.approx(0.2) and rows[1]["duration"] == pytest.approx(0.64)
    model_summary = result["model"]
    assert model_summary["exact_match_rate"] == 1.0 and model_summary["word_error_rate"] == 0.0
    assert model_summary["cut_off_prefix_rate"] == 1.0


def test_wrong_and_missing_words_are_counted():
    seconds = 10.0
    model = np.zeros(int(seconds * RATE), np.float32)
    reference = np.zeros_like(model)
    _say(reference, 2.4, ["eins", "zwei"])
    _say(reference, 5.3, ["drei"])
    _say(model, 2.6, ["eins", "drei", "acht"])  # one substitution, one insertion
    _say(model, 5.3, ["vier"])  # a cut-off reply that starts with a wrong word
    speaking = np.zeros(int(seconds * 25), np.float32)
    result = report.reply_content([_dialogue(model, reference, speaking)], CONFIG, AmplitudeReader())
    rows = result["replies"]
    assert rows[0]["substitutions"] == 1 and rows[0]["insertions"] == 1 and rows[0]["deletions"] == 0
    assert rows[0]["onset"] is None and rows[0]["duration"] == 0.0  # the speaking flag never rose
    assert not rows[1]["prefix"]
    assert result["model"]["exact_match_rate"] == 0.0 and result["model"]["word_error_rate"] == 1.0
    assert result["reference"]["exact_match_rate"] == 1.0
    assert result["reference"]["cut_off_prefix_rate"] == 1.0


def test_sampled_tokens_are_read_as_words_in_the_same_windows():
    """Model v2's sampled tokens, read as words over each reply window: a wrong token counts even
    where the audio is right, and a token outside the window is not read."""
    seconds = 10.0
    model = np.zeros(int(seconds * RATE), np.float32)
    reference = np.zeros_like(model)
    _say(reference, 2.4, ["eins", "zwei"])
    _say(reference, 5.3, ["drei"])
    _say(model, 2.6, ["eins", "zwei"])
    speaking = np.zeros(int(seconds * 25), np.float32)
    tokens = torch.zeros(int(seconds * 25), dtype=torch.long)
    word = {w: 3 + i for i, w in enumerate(WORDS)}
    tokens[40] = word["neun"]  # 1.6 s: inside the user's turn, before the first window
    tokens[64], tokens[65], tokens[72], tokens[79] = 1, word["eins"], word["drei"], 2  # a wrong word
    tokens[133], tokens[134], tokens[140] = 1, word["drei"], word["vier"]  # cut off: a right prefix
    dialogue = _dialogue(model, reference, speaking)
    dialogue.feedback = tokens
    result = report.reply_content([dialogue], CONFIG, AmplitudeReader(), vocabulary=WORDS)
    assert result["model"]["exact_match_rate"] == 1.0  # the audio said the right words
    summary = result["tokens"]
    assert summary["complete"] == 1 and summary["exact_match_rate"] == 0.0
    assert summary["substitutions"] == 1 and summary["insertions"] == 0
    assert summary["cut_off"] == 1 and summary["cut_off_prefix_rate"] == 1.0
    # without a vocabulary (or for model v1's feedback rows) there is no token reading
    assert report.reply_content([dialogue], CONFIG, AmplitudeReader())["tokens"] is None


def test_token_ids_beyond_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        report.token_words(np.array([0, 3, 3 + len(WORDS)]), WORDS)
    assert report.token_words(np.array([0, 1, 5, 0, 3, 2]), WORDS) == ("zwei", "null")
