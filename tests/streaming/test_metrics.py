"""Full-duplex metrics on constructed signals whose answers are known."""

import numpy as np
import pytest

from s2s.data.manifest import Manifest, Segment
from s2s.streaming.metrics import (
    EventTimes,
    activity_from_energy,
    events_from_manifest,
    missed_by_reply_window,
    missed_by_turn_end,
    onsets,
    score_dialogue,
    summarize,
    takeovers_by_pause_length,
)

FRAME = 0.04  # 25 Hz model frames


def _active(seconds: float, spans: list[tuple[float, float]]) -> np.ndarray:
    times = np.arange(round(seconds / FRAME)) * FRAME
    active = np.zeros(len(times), dtype=bool)
    for start, end in spans:
        active[(times >= start - 1e-9) & (times < end - 1e-9)] = True
    return active


def test_onset_300_ms_after_end_of_turn_reads_300_ms():
    events = EventTimes(turn_ends=[2.0, 6.0], next_user_starts=[5.0, float("inf")], barge_ins=[], pauses=[])
    scores = score_dialogue(_active(10.0, [(2.3, 3.5), (6.3, 7.0)]), FRAME, events)
    assert scores.missed_responses == 0
    assert all(abs(latency - 0.3) <= FRAME for latency in scores.response_latencies)


def test_no_onset_before_the_user_speaks_again_is_a_missed_response():
    events = EventTimes(turn_ends=[2.0], next_user_starts=[3.0], barge_ins=[], pauses=[])
    scores = score_dialogue(_active(6.0, [(3.5, 4.0)]), FRAME, events)
    assert scores.missed_responses == 1 and scores.response_latencies == []
    already_speaking = score_dialogue(_active(6.0, [(1.0, 5.0)]), FRAME, events)
    assert already_speaking.missed_responses == 1  # speaking through the turn end is not a response


def test_a_system_that_never_stops_ignores_every_barge_in():
    events = EventTimes(turn_ends=[], next_user_starts=[], barge_ins=[1.0, 4.0, 7.5], pauses=[])
    scores = score_dialogue(_active(12.0, [(0.0, 12.0)]), FRAME, events)
    assert scores.ignored_barge_ins == 3 and scores.barge_in_stop_latencies == []
    stopping = score_dialogue(_active(12.0, [(0.0, 1.2), (2.0, 4.16), (5.0, 7.5)]), FRAME, events)
    assert stopping.ignored_barge_ins == 0 and stopping.barge_ins_while_silent == 0
    assert np.allclose(stopping.barge_in_stop_latencies, [0.2, 0.16, 0.0], atol=FRAME)
    assert [(o, s, None if x is None else round(x, 6)) for o, s, x in scores.barge_in_outcomes] == [
        (1.0, True, None),
        (4.0, True, None),
        (7.5, True, None),
    ]
    mixed = score_dialogue(_active(12.0, [(0.0, 1.2), (5.0, 12.0)]), FRAME, events)
    assert [(o, s) for o, s, _ in mixed.barge_in_outcomes] == [(1.0, True), (4.0, False), (7.5, True)]
    assert (
        np.isclose(mixed.barge_in_outcomes[0][2], 0.2, atol=FRAME) and mixed.barge_in_outcomes[2][2] is None
    )
    assert (mixed.barge_ins_while_silent, mixed.ignored_barge_ins) == (1, 1)


def test_false_takeovers_count_onsets_inside_pauses():
    events = EventTimes(
        turn_ends=[], next_user_starts=[], barge_ins=[], pauses=[(1.0, 1.6), (3.0, 3.5), (5.0, 5.4)]
    )
    scores = score_dialogue(_active(8.0, [(1.2, 1.4), (2.0, 3.1), (5.6, 6.0)]), FRAME, events)
    assert scores.false_takeovers == 1 and scores.pauses == 3  # (2.0-3.1) started before its pause


def test_energy_activity_and_onsets():
    rate, frame = 16000, 640
    audio = np.zeros(rate * 2)
    audio[8000:16000] = 0.1 * np.sin(np.arange(8000) * 0.1)
    active = activity_from_energy(audio, frame)
    expected = np.zeros(50, dtype=bool)
    expected[12:25] = True  # samples 8000-16000 touch frames 12 (half of it) to 24
    assert np.array_equal(active, expected)
    assert list(onsets(active)) == [12]  # 8000 / 640 = 12.5: frame 12 holds the onset


def test_summary_statistics():
    summary = summarize([0.1, 0.2, 0.3, 0.4, 1.0])
    assert summary["mean"] == pytest.approx(0.4) and summary["p50"] == pytest.approx(0.3)
    assert summary["p90"] == pytest.approx(0.76) and summary["count"] == 5
    assert summarize([])["mean"] is None


def _dialogue(segments: list[tuple[str, str, float, float]]) -> Manifest:
    rate = 16000
    return Manifest(
        dialogue_id="constructed",
        sample_rate=rate,
        num_samples=12 * rate,
        segments=tuple(
            Segment(speaker, kind, round(start * rate), round(end * rate), "", 0, rate)
            for speaker, kind, start, end in segments
        ),
    )


# turn 1 with a pause, a reply cut by a barge-in, turn 2, a complete reply
DIALOGUE = _dialogue(
    [
        ("user", "pause", 1.0, 1.6),
        ("user", "turn", 0.0, 3.0),
        ("system", "cut-off reply", 3.3, 4.6),
        ("user", "barge-in", 4.0, 4.4),
        ("user", "turn", 6.0, 8.0),
        ("system", "reply", 8.3, 9.5),
    ]
)


def test_events_from_manifest_cut_pauses_out_of_the_user_speech():
    events = events_from_manifest(DIALOGUE)
    assert events.turn_ends == [3.0, 8.0] and events.next_user_starts == [4.0, float("inf")]
    assert events.barge_ins == [4.0] and events.pauses == [(1.0, 1.6)]
    assert events.user_speech == [(0.0, 1.0), (1.6, 3.0), (6.0, 8.0)]  # the barge-in is not in it


def test_talk_over_counts_onsets_in_user_speech_not_in_pauses_or_barge_ins():
    spans = [
        (0.48, 0.8),  # user speaking: a talk-over
        (1.2, 1.4),  # inside the pause: a false take-over, not a talk-over
        (3.32, 4.08),  # the response
        (4.2, 4.3),  # during the barge-in: the barge-in scores cover it
        (6.8, 7.0),  # user speaking: a talk-over
        (7.2, 7.6),  # and another in the same turn
        (8.0, 9.0),  # at the turn's end exactly: a response, not a talk-over
    ]
    scores = score_dialogue(_active(12.0, spans), FRAME, events_from_manifest(DIALOGUE))
    assert scores.talk_overs == 3 and scores.turns == 2 and scores.talk_overs_per_turn == 1.5
    assert scores.false_takeovers == 1 and scores.missed_responses == 0
    quiet = score_dialogue(_active(12.0, [(3.32, 4.08), (8.2, 9.0)]), FRAME, events_from_manifest(DIALOGUE))
    assert quiet.talk_overs == 0 and quiet.talk_overs_per_turn == 0.0
    speaking_before_the_turn = score_dialogue(
        _active(12.0, [(5.0, 7.0)]), FRAME, events_from_manifest(DIALOGUE)
    )
    assert speaking_before_the_turn.talk_overs == 0  # no onset inside the turn: not counted here


def test_events_without_user_speech_score_no_talk_over():
    events = EventTimes(turn_ends=[2.0], next_user_starts=[5.0], barge_ins=[], pauses=[])
    scores = score_dialogue(_active(6.0, [(1.0, 1.5), (2.3, 3.0)]), FRAME, events)
    assert scores.talk_overs == 0 and scores.turns == 1


def test_missed_responses_are_counted_by_when_the_turn_ended():
    """Turns ending at 5, 25, 45 and 55 s; the model answers the first two only: the 40 s+ bucket
    holds both misses, the others none; every turn lands in exactly one bucket."""
    ends = [5.0, 25.0, 45.0, 55.0]
    events = EventTimes(turn_ends=ends, next_user_starts=[e + 4.0 for e in ends], barge_ins=[], pauses=[])
    scores = score_dialogue(_active(60.0, [(5.3, 6.0), (25.4, 26.0)]), FRAME, events)
    assert scores.turn_outcomes == [(5.0, True), (25.0, True), (45.0, False), (55.0, False)]
    rows = missed_by_turn_end(scores.turn_outcomes)
    assert [(r["from_s"], r["to_s"], r["turns"], r["missed"]) for r in rows] == [
        (0.0, 20.0, 1, 0),
        (20.0, 40.0, 1, 0),
        (40.0, None, 2, 2),
    ]
    assert rows[2]["missed_rate"] == 1.0 and rows[0]["missed_rate"] == 0.0
    assert missed_by_turn_end([])[0]["missed_rate"] is None
    assert sum(r["turns"] for r in missed_by_turn_end(scores.turn_outcomes, (0.0, 10.0, 50.0))) == 4


def test_missed_responses_are_counted_by_the_time_a_turn_left_for_a_reply():
    """A turn the user barges in after 0.6 s (the model starts at 0.8 s: after the barge-in, missed),
    one with 1.5 s before the next turn (answered at 0.4 s) and one with nothing after it (the 3 s
    scoring window, missed): the short window holds its miss, the long bucket the other."""
    events = EventTimes(
        turn_ends=[2.0, 10.0, 20.0], next_user_starts=[2.6, 11.5, float("inf")], barge_ins=[2.6], pauses=[]
    )
    scores = score_dialogue(_active(30.0, [(2.8, 3.2), (10.4, 11.0)]), FRAME, events)
    windows = [(round(w, 6), answered) for w, answered in scores.reply_window_outcomes]
    assert windows == [(0.6, False), (1.5, True), (3.0, False)]
    rows = missed_by_reply_window(scores.reply_window_outcomes)
    assert [(r["from_s"], r["to_s"], r["turns"], r["missed"]) for r in rows] == [
        (0.0, 1.0, 1, 1),
        (1.0, None, 2, 1),
    ]
    assert rows[0]["missed_rate"] == 1.0 and rows[1]["missed_rate"] == 0.5
    assert sum(r["missed"] for r in rows) == scores.missed_responses == 2


def test_take_overs_are_counted_by_pause_length_with_when_in_the_pause():
    """Pauses of 0.4, 0.5 and 0.7 s (40 ms frames): the system starts 0.32 s into the first and
    0.52 s into the third, never in the second; short bucket 1 of 2 at 320 ms, long 1 of 1 at
    520 ms; every pause lands in exactly one bucket and the counts add up to false_takeovers."""
    pauses = [(2.0, 2.4), (5.0, 5.5), (8.0, 8.7)]
    events = EventTimes(turn_ends=[], next_user_starts=[], barge_ins=[], pauses=pauses)
    scores = score_dialogue(_active(12.0, [(2.32, 2.6), (8.52, 9.0)]), FRAME, events)
    lengths = [round(length, 6) for length, _ in scores.pause_outcomes]
    onsets = [None if o is None else round(o, 6) for _, o in scores.pause_outcomes]
    assert lengths == [0.4, 0.5, 0.7] and onsets == [0.32, None, 0.52]
    rows = takeovers_by_pause_length(scores.pause_outcomes)
    got = [(r["from_s"], r["to_s"], r["pauses"], r["takeovers"]) for r in rows]
    assert got == [(0.0, 0.55, 2, 1), (0.55, None, 1, 1)]
    assert rows[0]["takeover_rate"] == 0.5 and abs(rows[0]["onset_into_pause_p50_s"] - 0.32) < 1e-6
    assert abs(rows[1]["onset_into_pause_p50_s"] - 0.52) < 1e-6
    assert sum(r["takeovers"] for r in rows) == scores.false_takeovers == 2
    empty = takeovers_by_pause_length([])
    assert empty[0]["takeover_rate"] is None and empty[0]["onset_into_pause_p50_s"] is None
