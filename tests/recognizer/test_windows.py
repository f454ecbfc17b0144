"""Reply windows from a constructed manifest: edges, cut-off replies, the last reply at the dialogue end."""

import pytest

from s2s.data.manifest import Manifest, ManifestError, Segment
from s2s.recognizer.windows import reply_windows

RATE = 16000


def _segment(speaker, kind, start, end, text="", exchange=0):
    return Segment(speaker, kind, round(start * RATE), round(end * RATE), text, exchange, RATE)


def _manifest(segments, seconds=12.0):
    return Manifest("dialogue", RATE, round(seconds * RATE), tuple(segments))


def _constructed():
    return _manifest(
        [
            _segment("user", "turn", 0.5, 2.0, "one two", 0),
            _segment("user", "pause", 1.0, 1.4, "", 0),  # a pause is not the user speaking again
            _segment("system", "reply", 2.3, 3.4, "eins zwei", 0),
            _segment("user", "turn", 4.0, 5.0, "three four five", 1),
            _segment("system", "cut-off reply", 5.4, 6.3, "drei vier fünf", 1),
            _segment("user", "barge-in", 6.1, 6.5, "stop", 1),
            _segment("user", "turn", 7.5, 8.5, "six", 2),
            _segment("system", "reply", 8.9, 9.6, "sechs", 2),  # the last reply: window to the end
        ]
    )


def test_windows_run_from_the_end_of_turn_to_the_users_next_onset():
    windows = reply_windows(_constructed())
    assert [(w.exchange, w.kind, w.words) for w in windows] == [
        (0, "reply", ("eins", "zwei")),
        (1, "cut-off reply", ("drei", "vier", "fünf")),
        (2, "reply", ("sechs",)),
    ]
    first, cut, last = windows
    assert (first.start, first.end, first.turn_end) == (2.0, 4.0, 2.0)
    assert (first.reply_start, first.reply_end, first.barge_in) == (2.3, 3.4, None)
    # the cut-off reply's window closes when the user barges in, not when the system falls silent
    assert (cut.start, cut.end, cut.barge_in) == (5.0, 6.1, 6.1)
    assert (cut.reply_start, cut.reply_end) == (5.4, 6.3)
    # the last reply's window runs to the end of the dialogue
    assert (last.start, last.end, last.barge_in) == (8.5, 12.0, None)
    assert (last.start_sample, last.end_sample, last.sample_rate) == (8.5 * RATE, 12 * RATE, RATE)
    assert last.duration == pytest.approx(3.5)


def test_slice_cuts_the_window_out_of_a_signal():
    import numpy as np

    audio = np.arange(12 * RATE)
    window = reply_windows(_constructed())[0]
    assert window.slice(audio)[0] == 2 * RATE and len(window.slice(audio)) == 2 * RATE
    stereo = np.stack([audio, audio])
    assert window.slice(stereo).shape == (2, 2 * RATE)


def test_windows_of_a_real_synthetic_corpus_hold_their_replies(tiny_corpus):
    from s2s.data.manifest import load_manifest

    paths = sorted((tiny_corpus.out_dir / "test").glob("*.json"))
    kinds = set()
    for path in paths:
        manifest = load_manifest(path)
        windows = reply_windows(manifest)
        assert len(windows) == len(manifest.speech("system"))
        for w in windows:
            kinds.add(w.kind)
            assert w.start <= w.reply_start < w.end <= manifest.duration
            if w.kind == "reply":
                assert w.reply_end <= w.end, (path.name, w)
            else:
                assert w.barge_in is not None and w.end == w.barge_in, (path.name, w)
    assert kinds == {"reply", "cut-off reply"}  # the tiny corpus barges in often


def test_a_reply_without_its_users_turn_is_an_error():
    manifest = _manifest([_segment("system", "reply", 1.0, 2.0, "eins", 3)])
    with pytest.raises(ManifestError, match="exchange 3"):
        reply_windows(manifest)
