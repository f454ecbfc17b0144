"""Content scoring on constructed replies whose answers are known, and the word alignment against
a brute-force enumeration of every alignment."""

import functools
import itertools

import numpy as np
import pytest
import torchaudio

from s2s.streaming.content import (
    ContentSummary,
    reply_words,
    score_reply,
    summarize_replies,
    word_errors,
)

REPLY = reply_words("eins zwei drei vier")


def test_right_wrong_missing_and_extra_words():
    right = score_reply(REPLY, list(REPLY), onset=0.4, duration=1.5)
    assert right.exact and right.errors == 0 and right.prefix
    wrong = score_reply(REPLY, ["eins", "zwei", "sieben", "vier"])
    assert not wrong.exact and (wrong.substitutions, wrong.deletions, wrong.insertions) == (1, 0, 0)
    missing = score_reply(REPLY, ["eins", "drei", "vier"])
    assert not missing.exact and (missing.substitutions, missing.deletions, missing.insertions) == (0, 1, 0)
    extra = score_reply(REPLY, [*REPLY, "fünf"])
    assert not extra.exact and (extra.substitutions, extra.deletions, extra.insertions) == (0, 0, 1)
    assert not extra.prefix  # longer than the expected reply: not a prefix of it

    summary = summarize_replies([right, wrong, missing, extra])
    assert summary.complete == 4 and summary.exact == 1 and summary.exact_match_rate == 0.25
    # 1 of 4 exact: the Wilson 95% interval, (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    low, high = summary.exact_match_interval
    assert low == pytest.approx(0.0456, abs=1e-4) and high == pytest.approx(0.6994, abs=1e-4)
    assert summary.expected_words == 16 and summary.word_errors == 3
    assert summary.word_error_rate == pytest.approx(3 / 16)
    assert (summary.substitutions, summary.deletions, summary.insertions) == (1, 1, 1)
    assert summary.cut_off == 0 and summary.cut_off_prefix_rate is None


def test_a_silent_model_deletes_every_word():
    silent = score_reply(REPLY, [], onset=None, duration=None)
    assert not silent.exact and not silent.prefix and silent.deletions == 4 and silent.errors == 4
    summary = summarize_replies([silent, score_reply(REPLY, list(REPLY))])
    assert summary.word_error_rate == pytest.approx(4 / 8) and summary.without_words == 1
    assert summary.exact_match_rate == 0.5


def test_a_reply_cut_by_a_barge_in_is_judged_by_its_prefix_only():
    stopped_right = score_reply(REPLY, ["eins", "zwei"], cut_off=True, onset=0.3, duration=0.6)
    stopped_wrong = score_reply(REPLY, ["eins", "acht"], cut_off=True)
    went_on = score_reply(REPLY, list(REPLY), cut_off=True)  # ignoring the barge-in: still right words
    silent = score_reply(REPLY, [], cut_off=True)
    assert stopped_right.prefix and not stopped_right.exact
    assert not stopped_wrong.prefix and went_on.prefix and not silent.prefix

    complete = score_reply(REPLY, ["eins", "zwei", "drei"])
    summary = summarize_replies([stopped_right, stopped_wrong, went_on, silent, complete])
    assert summary.replies == 5 and summary.cut_off == 4 and summary.complete == 1
    assert summary.cut_off_prefix == 2 and summary.cut_off_prefix_rate == 0.5
    assert summary.cut_off_without_words == 1
    # cut-off replies are kept out of exact match and word errors: only the complete one counts
    assert summary.exact == 0 and summary.exact_match_rate == 0.0
    assert summary.expected_words == 4 and summary.word_errors == 1 and summary.deletions == 1


def test_the_same_summary_serves_both_channels_and_serializes_to_plain_data():
    import json

    model = [score_reply(REPLY, ["eins"], dialogue="d0", exchange=0, onset=0.12345678, duration=0.5)]
    reference = [score_reply(REPLY, list(REPLY), dialogue="d0", exchange=0)]
    model_summary, ceiling = summarize_replies(model), summarize_replies(reference)
    assert isinstance(ceiling, ContentSummary) and ceiling.exact_match_rate == 1.0
    assert model_summary.exact_match_rate == 0.0
    row = json.loads(json.dumps(model[0].to_json()))
    assert row["expected"] == list(REPLY) and row["recognized"] == ["eins"] and row["onset"] == 0.1235
    assert row["exchange"] == 0 and row["dialogue"] == "d0" and row["cut_off"] is False
    assert json.loads(json.dumps(ceiling.to_json()))["word_error_rate"] == 0.0
    assert summarize_replies([]).exact_match_rate is None and summarize_replies([]).word_error_rate is None


def test_a_string_instead_of_words_is_refused():
    with pytest.raises(TypeError, match="split it"):
        score_reply("eins zwei", ["eins"])


def _all_alignments(expected: tuple, recognized: tuple) -> set[tuple[int, int, int]]:
    """(S, D, I) of every monotone alignment, enumerated without dynamic programming's shortcut."""

    @functools.cache
    def walk(i: int, j: int) -> frozenset:
        if i == len(expected) and j == len(recognized):
            return frozenset({(0, 0, 0)})
        found = set()
        if i < len(expected) and j < len(recognized):
            sub = int(expected[i] != recognized[j])
            found |= {(s + sub, d, n) for s, d, n in walk(i + 1, j + 1)}
        if i < len(expected):
            found |= {(s, d + 1, n) for s, d, n in walk(i + 1, j)}
        if j < len(recognized):
            found |= {(s, d, n + 1) for s, d, n in walk(i, j + 1)}
        return frozenset(found)

    return set(walk(0, 0))


def test_word_errors_against_brute_force_on_random_word_lists():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    vocabulary = ["null", "eins", "zwei", "drei"]
    for case in range(300):
        expected = tuple(rng.choice(vocabulary, size=rng.integers(0, 7)).tolist())
        recognized = tuple(rng.choice(vocabulary, size=rng.integers(0, 7)).tolist())
        found = word_errors(expected, recognized)
        options = _all_alignments(expected, recognized)
        best = min(sum(option) for option in options)
        message = f"seed {seed} case {case}: {expected} vs {recognized} gave {found}"
        assert found.total == best, message
        assert (found.substitutions, found.deletions, found.insertions) in options, message
        assert found.total == torchaudio.functional.edit_distance(list(expected), list(recognized)), message


def test_word_errors_prefer_substitutions_among_equal_alignments():
    found = word_errors(("a", "b"), ("c",))
    assert (found.substitutions, found.deletions, found.insertions) == (1, 1, 0)
    assert word_errors((), ("x", "y")).insertions == 2 and word_errors(("x",), ()).deletions == 1
    assert all(word_errors(p, p).total == 0 for p in itertools.permutations("abc"))
