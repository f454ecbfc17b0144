"""Full-duplex metrics on constructed signals whose answers are known."""

import numpy as np
import pytest

from s2s.streaming.metrics import (
    EventTimes,
    activity_from_energy,
    mel_cepstral_distortion,
    onsets,
    score_dialogue,
    summarize,
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


def test_mel_cepstral_distortion_is_zero_for_itself_and_time_shift_invariant(generator):
    rng = np.random.default_rng(0)
    mel = rng.normal(-6, 3, size=(60, 80))
    assert mel_cepstral_distortion(mel, mel) == pytest.approx(0.0, abs=1e-9)
    stretched = np.repeat(mel, 2, axis=0)  # the same content at half speed: DTW absorbs it
    assert mel_cepstral_distortion(mel, stretched) == pytest.approx(0.0, abs=1e-9)
    assert mel_cepstral_distortion(mel, rng.normal(-6, 3, size=(60, 80))) > 5.0


def test_pooled_mel_cepstral_distortion():
    rng = np.random.default_rng(1)
    mel = rng.normal(-6, 3, size=(80, 80))
    assert mel_cepstral_distortion(mel, mel, pool=4) == pytest.approx(0.0, abs=1e-9)
    assert mel_cepstral_distortion(mel, rng.normal(-6, 3, size=(80, 80)), pool=4) > 1.0
