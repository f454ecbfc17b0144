"""Did the system say the right words? Scoring recognized reply words against the expected ones.

Per reference reply the evaluation runs a recognizer over the model's output in the reply's window
(user end of turn -> the user speaks again) and hands the words here with the expected words from
the manifest. Complete replies are judged by exact match and word error rate; a reply the reference
cut off at a barge-in has no exact answer (the model should stop early), so it is judged by whether
what was recognized is a non-empty prefix of the expected words: only right words before stopping.

Everything is a pure function of words, so the same calls score the reference system channel of
the same dialogues (the recognizer's ceiling) and the model's channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from s2s.streaming.intervals import wilson_interval


@dataclass(frozen=True)
class WordErrors:
    """Edits of one minimum-edit alignment of recognized against expected words."""

    substitutions: int
    deletions: int  # expected words missing from the recognition
    insertions: int  # recognized words that were not expected

    @property
    def total(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def word_errors(expected: Sequence[str], recognized: Sequence[str]) -> WordErrors:
    """Levenshtein alignment of words with its substitution / deletion / insertion counts.

    The total is the edit distance; where several minimum alignments exist, the backtrace prefers
    a match or substitution, then a deletion, then an insertion (as Kaldi's and jiwer's do), so
    "a b" -> "c" reads as one substitution and one deletion, not two deletions and an insertion.
    """
    n, m = len(expected), len(recognized)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(
                cost[i - 1][j - 1] + (expected[i - 1] != recognized[j - 1]),
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
            )
    substitutions = deletions = insertions = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (expected[i - 1] != recognized[j - 1]):
            substitutions += expected[i - 1] != recognized[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            deletions += 1
            i -= 1
        else:
            insertions += 1
            j -= 1
    return WordErrors(substitutions, deletions, insertions)


@dataclass(frozen=True)
class ReplyScore:
    """One reference reply: what was expected, what was recognized, and how they compare."""

    expected: tuple[str, ...]
    recognized: tuple[str, ...]
    exact: bool  # recognized == expected
    prefix: bool  # recognized is a non-empty prefix of expected (the figure for cut-off replies)
    errors: int  # substitutions + deletions + insertions
    substitutions: int
    deletions: int
    insertions: int
    cut_off: bool  # the reference reply was cut off by a user barge-in
    onset: float | None = None  # seconds of the model's first speech in the window; None: silent
    duration: float | None = None  # seconds the model spoke in the window
    dialogue: str = ""
    exchange: int | None = None

    def to_json(self) -> dict:
        record = asdict(self)
        record["expected"], record["recognized"] = list(self.expected), list(self.recognized)
        for key in ("onset", "duration"):
            if record[key] is not None:
                record[key] = round(float(record[key]), 4)
        return record


def reply_words(text: str) -> tuple[str, ...]:
    """The manifest's reply text (space-separated words) as a word tuple."""
    return tuple(text.split())


def score_reply(
    expected: Sequence[str],
    recognized: Sequence[str],
    cut_off: bool = False,
    onset: float | None = None,
    duration: float | None = None,
    dialogue: str = "",
    exchange: int | None = None,
) -> ReplyScore:
    """Compare one reply's recognized words with the expected ones (exact, word-for-word)."""
    for name, words in (("expected", expected), ("recognized", recognized)):
        if isinstance(words, str):
            raise TypeError(f"{name} must be a sequence of words, got the string {words!r}: split it first")
    expected, recognized = tuple(expected), tuple(recognized)
    edits = word_errors(expected, recognized)
    return ReplyScore(
        expected=expected,
        recognized=recognized,
        exact=recognized == expected,
        prefix=0 < len(recognized) <= len(expected) and recognized == expected[: len(recognized)],
        errors=edits.total,
        substitutions=edits.substitutions,
        deletions=edits.deletions,
        insertions=edits.insertions,
        cut_off=bool(cut_off),
        onset=None if onset is None else float(onset),
        duration=None if duration is None else float(duration),
        dialogue=dialogue,
        exchange=exchange,
    )


@dataclass(frozen=True)
class ContentSummary:
    """Content scores over a set of replies. Rates are None when nothing was there to rate.

    Exact match and word errors are over complete replies only; cut-off replies count in the
    prefix figure only, since the reference itself did not say all of their words.
    """

    replies: int
    complete: int
    exact: int
    exact_match_rate: float | None
    exact_match_interval: tuple[float, float] | None  # 95% Wilson interval (s2s/streaming/intervals.py)
    expected_words: int  # in complete replies
    word_errors: int  # substitutions + deletions + insertions over complete replies
    word_error_rate: float | None  # word_errors / expected_words
    substitutions: int
    deletions: int
    insertions: int
    without_words: int  # complete replies in which nothing was recognized
    cut_off: int
    cut_off_prefix: int  # cut-off replies whose recognized words are a non-empty prefix of expected
    cut_off_prefix_rate: float | None
    cut_off_without_words: int

    def to_json(self) -> dict:
        return asdict(self)


def summarize_replies(replies: Iterable[ReplyScore]) -> ContentSummary:
    replies = list(replies)
    complete = [r for r in replies if not r.cut_off]
    cut = [r for r in replies if r.cut_off]
    expected_words = sum(len(r.expected) for r in complete)
    errors = sum(r.errors for r in complete)
    exact = sum(r.exact for r in complete)
    prefix = sum(r.prefix for r in cut)
    return ContentSummary(
        replies=len(replies),
        complete=len(complete),
        exact=exact,
        exact_match_rate=exact / len(complete) if complete else None,
        exact_match_interval=wilson_interval(exact, len(complete)),
        expected_words=expected_words,
        word_errors=errors,
        word_error_rate=errors / expected_words if expected_words else None,
        substitutions=sum(r.substitutions for r in complete),
        deletions=sum(r.deletions for r in complete),
        insertions=sum(r.insertions for r in complete),
        without_words=sum(not r.recognized for r in complete),
        cut_off=len(cut),
        cut_off_prefix=prefix,
        cut_off_prefix_rate=prefix / len(cut) if cut else None,
        cut_off_without_words=sum(not r.recognized for r in cut),
    )
