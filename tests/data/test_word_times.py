"""Word times: espeak's word events, carried into the corpus manifests; format 1 manifests still load."""

import itertools
import json

import numpy as np
import pytest
import soundfile
import torch
from tiny_corpus import TINY_TIMING, tiny_config

from s2s.data.corpus import CorpusError, generate_corpus
from s2s.data.espeak import Espeak, Voice
from s2s.data.manifest import (
    FORMAT,
    FORMAT_WITHOUT_WORDS,
    SYSTEM,
    USER,
    Manifest,
    ManifestError,
    Segment,
    Word,
    load_manifest,
)
from s2s.data.synth import CorpusConfig, DialogueSynthesizer
from s2s.data.tasks import say_in_german


def _manifests(summary):
    for split in ("train", "val", "test"):
        for path in sorted((summary.out_dir / split).glob("*.json")):
            yield path, load_manifest(path)


@pytest.mark.parametrize(
    "text, voice",
    [
        ("zwei fünf null acht.", Voice("de+m3", rate=165, pitch=45)),
        ("three one, ", Voice("en-us+klatt4", rate=140, pitch=70)),
        ("seven nine zero.", Voice("en-029+f2", rate=210, pitch=25, pitch_range=80)),
        ("stop!", Voice("en+m3")),
    ],
)
def test_espeak_word_events_are_the_texts_words_in_order_inside_the_phrase(text, voice):
    speech = Espeak().speak(text, voice)
    starts = [w.start for w in speech.words]
    assert [w.text for w in speech.words] == text.replace(",", "").replace(".", "").replace("!", "").split()
    assert starts == sorted(set(starts)), f"word starts {starts} are not increasing"
    assert starts[0] >= 0 and starts[-1] < len(speech.samples)
    # Each word after the first starts where the audio is quiet or rising, not half a second off:
    # the gap between two starts is a plausible word length at these rates (0.1 - 1 s).
    gaps = np.diff(starts) / speech.sample_rate
    assert ((gaps > 0.1) & (gaps < 1.0)).all(), gaps


def test_phrase_word_starts_follow_resampling_and_trimming():
    synthesizer = DialogueSynthesizer(CorpusConfig(), say_in_german())
    voice = Voice("de+m3", rate=165, pitch=45)
    speech = synthesizer.espeak.speak("sieben null drei.", voice)
    phrase = synthesizer._phrase("sieben null drei.", ("sieben", "null", "drei"), voice, -3.0)
    assert phrase.starts[0] == 0, "the first word starts where the trimmed speech starts"
    # Independent mapping: the trimmed phrase is the 16 kHz audio from its first loud sample.
    untrimmed = synthesizer._resamplers[speech.sample_rate](
        torch.from_numpy(speech.samples.astype(np.float32) / 32768.0)
    ).numpy()
    first = int(np.flatnonzero(np.abs(untrimmed) > 0.01 * np.abs(untrimmed).max())[0])
    expected = [max(0, round(w.start * 16000 / 22050) - first) for w in speech.words]
    assert list(phrase.starts) == expected
    words = phrase.timed_words(1000)
    assert [(w.start_sample, w.end_sample) for w in words] == [
        (1000 + expected[0], 1000 + expected[1]),
        (1000 + expected[1], 1000 + expected[2]),
        (1000 + expected[2], 1000 + len(phrase.audio)),
    ]
    cut = phrase.timed_words(0, cut=expected[1] + 1)
    assert [w.text for w in cut] == ["sieben", "null"] and cut[-1].end_sample == expected[1] + 1
    faded = phrase.timed_words(0, cut=expected[2] - 1, fade=expected[1])
    assert [(w.text, w.end_sample) for w in faded] == [("sieben", expected[1])]
    faded = phrase.timed_words(0, cut=expected[2] - 1, fade=expected[1] + 1)
    assert [(w.text, w.end_sample) for w in faded] == [("sieben", expected[1]), ("null", expected[2] - 1)]


def test_manifest_words_tile_the_speech_of_every_segment(tiny_corpus):
    rate = 16000
    reaction = round(TINY_TIMING.stop_reaction[1] * rate) + 1
    for path, manifest in _manifests(tiny_corpus):
        assert manifest.has_word_times and json.loads(path.read_text())["format"] == FORMAT
        audio, _ = soundfile.read(path.with_suffix(".wav"), dtype="int16", always_2d=True)
        pauses = {s.exchange: s for s in manifest.segments if s.kind == "pause"}
        barge_ins = {s.exchange: s for s in manifest.segments if s.kind == "barge-in"}
        for segment in manifest.segments:
            words = segment.words
            if segment.kind == "pause":
                assert words == ()
                continue
            assert words[0].start_sample == segment.start_sample, f"{path.name}: {segment}"
            assert words[-1].end_sample == segment.end_sample, f"{path.name}: {segment}"
            pause = pauses.get(segment.exchange) if segment.kind == "turn" else None
            for ahead, word in itertools.pairwise(words):
                if pause is not None and ahead.end_sample == pause.start_sample:
                    assert word.start_sample == pause.end_sample, f"{path.name}: {segment}"
                else:
                    assert ahead.end_sample == word.start_sample, f"{path.name}: {segment}"
            channel = 0 if segment.speaker == USER else 1
            for word in words:  # a word is sound, not silence
                piece = audio[word.start_sample : word.end_sample, channel].astype(np.float64) / 32768
                assert 10 * np.log10(np.mean(piece**2)) > -45, f"{path.name}: {word} is silent"
            if segment.kind == "cut-off reply":
                barge_in = barge_ins[segment.exchange]
                assert len(words) <= len(segment.text.split())
                assert words[-1].start_sample < barge_in.start_sample + reaction, "a word after the fade"
            else:
                assert [w.text for w in words] == segment.text.split()


def test_a_format_1_manifest_loads_without_word_times(tiny_corpus, tmp_path):
    path, manifest = next(_manifests(tiny_corpus))
    record = json.loads(path.read_text())
    record["format"] = FORMAT_WITHOUT_WORDS
    for segment in record["segments"]:
        del segment["words"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(record))
    loaded = load_manifest(old)
    assert not loaded.has_word_times and all(s.words is None for s in loaded.segments)
    assert [(s.kind, s.start_sample, s.end_sample, s.text) for s in loaded.segments] == [
        (s.kind, s.start_sample, s.end_sample, s.text) for s in manifest.segments
    ]
    # Saved again it stays format 1, and a format 2 manifest round-trips exactly.
    loaded.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["format"] == FORMAT_WITHOUT_WORDS
    manifest.save(tmp_path / "copy.json")
    assert load_manifest(tmp_path / "copy.json") == manifest

    record["format"] = "s2s-dialogue/9"
    old.write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="s2s-dialogue/9"):
        load_manifest(old)


def test_words_that_disagree_with_their_segment_are_refused():
    def segment(kind, words, text="eins zwei"):
        return Segment(SYSTEM, kind, 100, 200, text, 0, 16000, tuple(words))

    segment("reply", [Word("eins", 100, 150), Word("zwei", 150, 200)])
    segment("cut-off reply", [Word("eins", 100, 150)])
    with pytest.raises(ManifestError, match="not its text"):
        segment("reply", [Word("eins", 100, 150)])
    with pytest.raises(ManifestError, match="not its text"):
        segment("reply", [Word("zwei", 100, 150), Word("eins", 150, 200)])
    with pytest.raises(ManifestError, match="outside the segment"):
        segment("reply", [Word("eins", 100, 150), Word("zwei", 150, 201)])
    with pytest.raises(ManifestError, match="before the word ahead"):
        segment("reply", [Word("eins", 100, 160), Word("zwei", 150, 200)])
    with pytest.raises(ManifestError, match=r"everywhere \(format 2\) or nowhere"):
        Manifest("d", 16000, 400, (segment("reply", [Word("eins", 100, 150), Word("zwei", 150, 200)]),
                                   Segment(USER, "turn", 300, 400, "one", 1, 16000)))  # fmt: skip


def test_a_corpus_of_the_previous_generator_is_named_as_such(tiny_corpus, tmp_path):
    record = json.loads((tiny_corpus.out_dir / "corpus.json").read_text())
    record["recipe"]["generator"] -= 1
    (tmp_path / "corpus.json").write_text(json.dumps(record))
    with pytest.raises(CorpusError, match=r"differences in: generator.*made by generator version \d"):
        generate_corpus(tiny_config(tmp_path), say_in_german(), progress=False)
