"""Per-event rows: each turn end and pause of a dialogue, scored where the headline rates score it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s2s.data.manifest import Manifest, Segment, Word
from s2s.models.config import DuplexConfig
from s2s.streaming.events import STATE_WINDOW, dialogue_events, failure_rows, state_separability
from s2s.streaming.intervals import wilson_interval
from s2s.streaming.report import free_running_summary, turn_taking

RATE = 16000


def _dialogue(generator, name: str, held_out: bool, config: DuplexConfig):
    """Three exchanges (turn with a pause, reply) at random times; the speaking probability random."""
    frame = config.frame_samples
    segments, cursor = [], int(torch.randint(0, 8, (1,), generator=generator)) * frame
    expected_words = []
    for exchange in range(3):
        lengths = [int(x) * frame for x in torch.randint(5, 20, (4,), generator=generator)]
        first, pause, second, gap = lengths
        before, after = (int(x) for x in torch.randint(1, 4, (2,), generator=generator))
        words = tuple(  # `before` words inside the first part, `after` inside the second
            Word("w", start, start + frame)
            for start in [cursor + i * frame for i in range(before)]
            + [cursor + first + pause + i * frame for i in range(after)]
        )
        expected_words.append((before, before + after))
        end = cursor + first + pause + second
        text = " ".join(w.text for w in words)
        segments.append(Segment("user", "turn", cursor, end, text, exchange, RATE, words))
        segments.append(
            Segment("user", "pause", cursor + first, cursor + first + pause, "", exchange, RATE, ())
        )
        cursor = end + gap
        reply = (Word("c", cursor, cursor + 5 * frame),)
        segments.append(Segment("system", "reply", cursor, cursor + 10 * frame, "c", exchange, RATE, reply))
        cursor += 12 * frame
    frames = cursor // frame + 40
    voice = {"name": "en-us+f3", "rate": 170, "pitch": 50, "pitch_range": 50, "held_out": held_out}
    manifest = Manifest(name, RATE, frames * frame, tuple(sorted(segments, key=lambda s: s.start_sample)),
                        info={"user_voice": voice})  # fmt: skip
    speaking = (torch.rand(frames, generator=generator) < 0.3).float().numpy()
    return SimpleNamespace(
        name=name, manifest=manifest, speaking=speaking, audio=None, state_gain=2.0, words=expected_words
    )


def test_rows_add_up_to_the_rates_and_name_each_event(generator):
    seed = generator.initial_seed()
    config = DuplexConfig()
    dialogues = [_dialogue(generator, f"d{i}", i % 2 == 0, config) for i in range(6)]
    dialogues.append(SimpleNamespace(name="no_manifest", manifest=None))
    rows = dialogue_events(dialogues, config, window=3.0)
    totals = turn_taking(dialogues, config, 3.0, sources=("probability",))["probability"]
    assert [r["dialogue"] for r in rows] == [f"d{i}" for i in range(6)], seed
    turns = [t for r in rows for t in r["turns"]]
    pauses = [p for r in rows for p in r["pauses"]]
    assert len(turns) == totals["turns"] == 18 and len(pauses) == totals["pauses"] == 18, seed
    missed = sum(t["latency_s"] is None for t in turns)
    assert np.isclose(missed / len(turns), totals["missed_response_rate"]), seed
    taken = sum(p["taken_over_after_s"] is not None for p in pauses)
    assert np.isclose(taken / len(pauses), totals["false_takeovers_per_pause"]), seed
    intervals = totals["intervals"]  # the rates' 95% intervals come from the same counts
    assert intervals["false_takeovers_per_pause"] == wilson_interval(taken, len(pauses)), seed
    assert intervals["missed_response_rate"] == wilson_interval(missed, len(turns)), seed
    assert (totals["false_takeovers"], totals["missed_responses"]) == (taken, missed), seed
    latencies = sorted(t["latency_s"] for t in turns if t["latency_s"] is not None)
    assert np.isclose(np.median(latencies), totals["response_latency_s"]["p50"], atol=1e-3), seed
    frame_seconds = config.frame_samples / RATE
    for row, dialogue in zip(rows, dialogues, strict=False):
        assert row["held_out_voice"] == (row["dialogue"] in ("d0", "d2", "d4")), seed
        assert row["user_voice"] == {"name": "en-us+f3", "rate": 170, "pitch": 50, "pitch_range": 50}, seed
        user_pauses = [s for s in dialogue.manifest.segments if s.kind == "pause"]
        speech_starts = [s.start for s in dialogue.manifest.segments if s.kind in ("turn", "barge-in")]
        user_turns = [s for s in dialogue.manifest.segments if s.speaker == "user" and s.kind == "turn"]
        for turn, segment in zip(row["turns"], user_turns, strict=True):  # until the user speaks again
            closes = min([t for t in speech_starts if t > segment.end] + [segment.end + 3.0])
            assert np.isclose(turn["reply_window_s"], closes - segment.end, atol=1e-3), seed
        for pause, segment, words in zip(row["pauses"], user_pauses, dialogue.words, strict=True):
            assert (pause["words_before"], pause["turn_words"]) == words, seed
            assert np.isclose(pause["start_s"], segment.start, atol=1e-3), seed
            assert np.isclose(pause["length_s"], segment.end - segment.start, atol=1e-3), seed
            first = int(np.ceil(segment.start / frame_seconds - 1e-9))
            last = int(np.ceil(segment.end / frame_seconds))
            onsets = [
                f
                for f in range(first, last)
                if dialogue.speaking[f] >= 0.5 and (f == 0 or dialogue.speaking[f - 1] < 0.5)
            ]
            assert (pause["taken_over_after_s"] is None) == (not onsets), seed
    lines = failure_rows(rows)
    assert sum("| missed turn |" in line for line in lines) == missed, seed
    assert sum("| take-over |" in line for line in lines) == taken, seed
    assert failure_rows([{**r, "turns": [], "pauses": []} for r in rows]) == [], seed


def test_barge_in_rows_name_each_late_or_ignored_stop(generator):
    """Each barge-in has a row with how long the model took to fall silent; the failure rows name
    those it stopped later than 300 ms or never, and the counts agree with the headline rates."""
    seed = generator.initial_seed()
    config = DuplexConfig()
    frame = config.frame_samples
    frame_seconds = frame / RATE
    starts = sorted(int(x) for x in torch.randperm(20, generator=generator)[:5] * 100 + 40)  # frames
    delays = [int(x) for x in torch.randint(1, 14, (5,), generator=generator)]  # frames until silence
    delays[int(torch.randint(0, 5, (1,), generator=generator))] = None  # one never stopped
    silent_at = starts[-1] + 90  # one more barge-in while the model is silent
    frames = silent_at + 60
    speaking = np.zeros(frames, dtype=np.float32)
    segments = []
    for start, delay in zip(starts, delays, strict=True):
        speaking[start - 20 : start + (80 if delay is None else delay)] = 0.9  # 80: past the window
        segments.append(
            Segment("system", "cut-off reply", (start - 20) * frame, (start + 5) * frame, "", 0, RATE)
        )
        segments.append(Segment("user", "barge-in", start * frame, (start + 10) * frame, "", 0, RATE))
    segments.append(Segment("user", "barge-in", silent_at * frame, (silent_at + 10) * frame, "", 0, RATE))
    manifest = Manifest("b", RATE, frames * frame, tuple(sorted(segments, key=lambda s: s.start_sample)))
    dialogue = SimpleNamespace(name="b", manifest=manifest, speaking=speaking, audio=None, state_gain=None)
    (row,) = dialogue_events([dialogue], config, window=3.0)
    got = [(b["at_s"], b["while_speaking"], b["stop_latency_s"]) for b in row["barge_ins"]]
    want = [
        (round(s * frame_seconds, 3), True, None if d is None else round(d * frame_seconds, 3))
        for s, d in zip(starts, delays, strict=True)
    ] + [(round(silent_at * frame_seconds, 3), False, None)]
    assert got == want, f"seed {seed}: {got} != {want}"
    late = [d is None or d * frame_seconds > 0.3 + 1e-9 for d in delays]
    assert [b["stopped_in_time"] for b in row["barge_ins"]] == [not x for x in late] + [False], seed
    lines = [line for line in failure_rows([row]) if "| late stop |" in line]
    assert len(lines) == sum(late), f"seed {seed}: {lines}"
    assert sum("never stopped" in line for line in lines) == 1, f"seed {seed}: {lines}"
    totals = turn_taking([dialogue], config, 3.0, sources=("probability",))["probability"]
    assert np.isclose(totals["barge_ins_stopped_within_300ms"], 1 - sum(late) / 5), seed
    assert totals["barge_ins_while_silent"] == 1, seed
    # validation's score counts a late stop as a miss (no turns or pauses here: the share alone)
    summary = free_running_summary(SimpleNamespace(dialogues=[dialogue]), config, 3.0)
    assert np.isclose(summary["score"], 1 - sum(late) / 5), f"seed {seed}: {summary}"
    assert summary["barge_in_stop_rate"] == 0.8, f"seed {seed}: {summary}"  # one never stopped


def test_rows_of_a_recording_without_voice_or_word_times_say_unknown():
    pause = {
        "start_s": 1.0,
        "length_s": 0.5,
        "taken_over_after_s": 0.2,
        "words_before": None,
        "turn_words": None,
    }
    row = {"dialogue": "rec", "user_voice": None, "held_out_voice": None, "turns": [], "pauses": [pause]}
    (line,) = failure_rows([row])[3:]
    assert "after word ? of ?" in line and "200 ms in" in line and line.endswith("| ? (?) |")


def test_state_log_odds_at_each_onset_and_their_auc(generator):
    """Model v2 rows carry the user-state head's log-odds averaged over validation's onset window
    (from the first frame centred at or after the onset), the split's AUC equals a pairwise count,
    and each failure row says on the wrong side of how many of the other class the head put it."""
    seed = generator.initial_seed()
    config = DuplexConfig()
    dialogues = [_dialogue(generator, f"d{i}", i % 2 == 0, config) for i in range(6)]
    for dialogue in dialogues:
        frames = len(dialogue.speaking)
        dialogue.turn_end_log_odds = torch.randn(frames, generator=generator).numpy().astype(np.float32) * 3
    rows = dialogue_events(dialogues, config, window=3.0)
    frame = config.frame_samples
    centres = np.arange(len(dialogues[0].speaking) * 2) * frame + frame // 2
    a, b = STATE_WINDOW
    ends, pauses = [], []
    for row, dialogue in zip(rows, dialogues, strict=True):
        user = dialogue.manifest.segments
        turn_ends = sorted(s.end_sample for s in user if s.kind == "turn")
        pause_starts = sorted(s.start_sample for s in user if s.kind == "pause")
        for events, onsets, into in ((row["turns"], turn_ends, ends), (row["pauses"], pause_starts, pauses)):
            for event, onset in zip(events, onsets, strict=True):
                first = int(np.searchsorted(centres, onset))
                want = float(np.mean(dialogue.turn_end_log_odds[first + a : first + b], dtype=np.float64))
                assert event["state_log_odds"] == pytest.approx(want, abs=1e-3), seed
                into.append(event["state_log_odds"])
    for row, dialogue in zip(rows, dialogues, strict=True):
        for pause in row["pauses"]:
            if pause["taken_over_after_s"] is None:
                assert pause["state_log_odds_at_take_over"] is None, seed
                continue
            began = round((pause["start_s"] + pause["taken_over_after_s"]) * RATE) // frame
            assert dialogue.speaking[began] >= 0.5 and (began == 0 or dialogue.speaking[began - 1] < 0.5), (
                seed
            )
            want = float(dialogue.turn_end_log_odds[began])
            assert pause["state_log_odds_at_take_over"] == pytest.approx(want, abs=1e-3), seed
    pairs = [(e > p) + 0.5 * (e == p) for e in ends for p in pauses]
    state = state_separability(rows)
    assert state["auc"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-12), seed
    assert (state["turn_ends"], state["pauses"]) == (len(ends), len(pauses)), seed
    lines = failure_rows(rows)
    for row in rows:
        for kind, others, label in (("pauses", ends, "take-over"), ("turns", pauses, "missed turn")):
            for event in row[kind]:
                failed = (
                    event.get("taken_over_after_s") is not None
                    if kind == "pauses"
                    else event["latency_s"] is None
                )
                if not failed:
                    continue
                value = event["state_log_odds"]
                wrong = [o for o in others if (o <= value if kind == "pauses" else o >= value)]
                text = f"log-odds {value:+.2f} (wrong side of {len(wrong) / len(others):.0%} of "
                at = event["start_s"] if kind == "pauses" else event["end_s"]
                assert any(f"| {label} | {at:.2f} s" in line and text in line for line in lines), seed
    # a split without pauses (a recording, another corpus): log-odds, no AUC, no share
    pauseless = [{**r, "pauses": [], "turns": [{**t, "latency_s": None} for t in r["turns"]]} for r in rows]
    assert state_separability(pauseless) is None, seed
    missed_lines = [line for line in failure_rows(pauseless) if "| missed turn |" in line]
    assert missed_lines and all("log-odds" in line and "wrong side" not in line for line in missed_lines), (
        seed
    )
    for dialogue in dialogues:
        del dialogue.turn_end_log_odds
    assert state_separability(dialogue_events(dialogues, config, window=3.0)) is None, seed
