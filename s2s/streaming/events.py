"""Every judged event of every dialogue, one by one: which turn was missed, which pause taken over,
which barge-in was stopped late or not at all.

The rates in metrics.json say how often; these rows say where (dialogue, time, voice, pause length,
how long the model waited), so a researcher can open the dialogue's audio at the spot instead of
re-streaming the split to find it. Read from the speaking probability, as the headline rates are.

Model v2 rows also carry what the user-state head believed at each silence onset (its log-odds of
"the turn has ended" against "a pause", over the frames validation reads them at), and
`state_separability` scores the whole split as validation's teacher-forced val/turn_end_state_auc does
(the encoder hears only the user, so streamed and teacher-forced heads agree). A take-over with the
head sure of a pause is the decoder's doing; one with the head sure of an end is the head's.
"""

from __future__ import annotations

import math

import numpy as np

from s2s.data.turn_cue_classifier import confusable_shares
from s2s.models.config import DuplexConfig
from s2s.streaming import metrics
from s2s.streaming.by_voice import user_voice_group, user_voice_record
from s2s.streaming.detection import roc_auc
from s2s.streaming.report import STOP_WITHIN_S, activity
from s2s.streaming.runner import StreamedDialogue
from s2s.training.turn_end_separability import OnsetWindows

STATE_WINDOW = OnsetWindows().state_window  # frames after a silence onset, as validation averages them


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _known(value) -> str:
    return "?" if value is None else str(value)


def _words_around_pauses(manifest) -> list[tuple[int | None, int | None]]:
    """Per user pause, in start order (as metrics.events_from_manifest lists them): how many of its
    turn's words end before it and how many the turn has; None where the manifest has no word times."""
    user = [s for s in manifest.segments if s.speaker == "user"]
    result = []
    for pause in sorted((s for s in user if s.kind == "pause"), key=lambda s: s.start):
        turns = [s for s in user if s.kind == "turn" and s.start_sample <= pause.start_sample < s.end_sample]
        if not turns or turns[0].words is None:
            result.append((None, None))
            continue
        words = turns[0].words
        result.append((sum(w.end_sample <= pause.start_sample for w in words), len(words)))
    return result


def onset_log_odds(log_odds: np.ndarray | None, onset: float, frame_seconds: float) -> float | None:
    """The mean state log-odds over STATE_WINDOW frames from the first frame whose centre lies at or
    after `onset` seconds (the first frame the targets label PAUSE or ENDED); None without the head's
    outputs or where the dialogue ends first."""
    if log_odds is None:
        return None
    first = math.ceil(onset / frame_seconds - 0.5)
    start, end = first + STATE_WINDOW[0], first + STATE_WINDOW[1]
    if start < 0 or end > len(log_odds):
        return None
    return float(np.mean(log_odds[start:end], dtype=np.float64))


def frame_log_odds(log_odds: np.ndarray | None, time: float, frame_seconds: float) -> float | None:
    """The state log-odds of the frame that starts at `time` seconds (an onset of the model's
    speech lies on a frame boundary); None without the head's outputs or past the dialogue."""
    if log_odds is None:
        return None
    frame = round(time / frame_seconds)
    return float(log_odds[frame]) if 0 <= frame < len(log_odds) else None


def dialogue_events(dialogues: list[StreamedDialogue], config: DuplexConfig, window: float) -> list[dict]:
    """Per dialogue with a manifest: its user voice, each turn end (answered after how long, or
    missed) and each internal pause (its length and, if the model took it over, how far in), each with
    the user-state head's log-odds at the onset (model v2; None for v1)."""
    frame_seconds = config.frame_samples / config.sample_rate
    rows = []
    for dialogue in dialogues:
        if dialogue.manifest is None:
            continue
        events = metrics.events_from_manifest(dialogue.manifest)
        active = activity(dialogue, config, "probability", energy_db=-40.0)
        scores = metrics.score_dialogue(active, frame_seconds, events, window)
        latencies = iter(scores.response_latencies)
        log_odds = getattr(dialogue, "turn_end_log_odds", None)
        turns = [
            {
                "end_s": _rounded(end),
                "latency_s": _rounded(next(latencies)) if answered else None,
                # until the user spoke again (or the scoring window closed): a reply must begin inside it
                "reply_window_s": _rounded(reply_window),
                "state_log_odds": _rounded(onset_log_odds(log_odds, end, frame_seconds)),
            }
            for (end, answered), (reply_window, _) in zip(
                scores.turn_outcomes, scores.reply_window_outcomes, strict=True
            )
        ]
        words = _words_around_pauses(dialogue.manifest)
        pauses = [
            {
                "start_s": _rounded(start),
                "length_s": _rounded(length),
                "taken_over_after_s": _rounded(onset),
                "words_before": before,  # of the turn's words, how many ended before the pause
                "turn_words": total,
                "state_log_odds": _rounded(onset_log_odds(log_odds, start, frame_seconds)),
                # what the head said on the frame the model began to speak (the frame whose BOS it
                # shifted), which may differ from its reading at the pause's onset
                "state_log_odds_at_take_over": _rounded(
                    None if onset is None else frame_log_odds(log_odds, start + onset, frame_seconds)
                ),
            }
            for (start, _), (length, onset), (before, total) in zip(
                events.pauses, scores.pause_outcomes, words, strict=True
            )
        ]
        barge_ins = [
            {
                "at_s": _rounded(onset),
                "while_speaking": speaking,  # False: the model was silent, nothing to stop
                "stop_latency_s": _rounded(latency),  # None while speaking: ignored
                # judged on the unrounded latency, as the headline share is
                "stopped_in_time": speaking and latency is not None and latency <= STOP_WITHIN_S,
            }
            for onset, speaking, latency in scores.barge_in_outcomes
        ]
        voice = user_voice_record(dialogue)
        group = user_voice_group(dialogue)
        rows.append(
            {
                "dialogue": dialogue.name,
                "user_voice": {k: v for k, v in voice.items() if k != "held_out"} or None,
                "held_out_voice": None if group is None else group == "held_out",
                "state_gain": dialogue.state_gain,
                "turns": turns,
                "pauses": pauses,
                "barge_ins": barge_ins,
            }
        )
    return rows


def state_separability(rows: list[dict]) -> dict | None:
    """The user-state head's ROC AUC at the split's silence onsets (turn ends positive, pauses
    negative, scored by the log-odds at each onset), with the counts; None where the rows carry no
    log-odds (model v1) or lack either class."""
    ends = [t["state_log_odds"] for r in rows for t in r["turns"] if t.get("state_log_odds") is not None]
    pauses = [p["state_log_odds"] for r in rows for p in r["pauses"] if p.get("state_log_odds") is not None]
    if not ends or not pauses:
        return None
    return {
        "auc": roc_auc(np.asarray(ends), np.asarray(pauses)),
        "turn_ends": len(ends),
        "pauses": len(pauses),
    }


def _confusion(rows: list[dict]) -> dict[tuple[int, str, int], float]:
    """(row, "turns" | "pauses", index) -> the share of the other class the state head ranked on this
    onset's wrong side (turn ends it found less ended-like than a pause; pauses it found more); {}
    without log-odds for both classes."""
    keys, scores, labels = [], [], []
    for number, row in enumerate(rows):
        for kind, label in (("turns", 0), ("pauses", 1)):
            for index, event in enumerate(row[kind]):
                if event.get("state_log_odds") is not None:
                    keys.append((number, kind, index))
                    scores.append(-event["state_log_odds"])  # pause-like scores high, as for the probe
                    labels.append(label)
    if 0 not in labels or 1 not in labels:
        return {}
    return dict(zip(keys, confusable_shares(np.asarray(scores), np.asarray(labels)), strict=True))


def _state_text(event: dict, share: float | None, other: str) -> str:
    if event.get("state_log_odds") is None:
        return ""
    text = f"; state head ended-vs-pause log-odds {event['state_log_odds']:+.2f}"
    return text if share is None else f"{text} (wrong side of {share:.0%} of {other})"


def failure_rows(rows: list[dict]) -> list[str]:
    """Markdown: one line per missed turn, per pause taken over and per barge-in the model did not
    stop within STOP_WITHIN_S (where to listen), [] if none."""
    lines = []
    confusion = _confusion(rows)
    for number, row in enumerate(rows):
        voice = "held-out" if row["held_out_voice"] else "seen" if row["held_out_voice"] is False else "?"
        name = (row["user_voice"] or {}).get("name", "?")
        for index, turn in enumerate(row["turns"]):
            if turn["latency_s"] is None:
                state = _state_text(turn, confusion.get((number, "turns", index)), "pauses")
                if turn.get("reply_window_s") is not None:  # metrics.json from 2026-12-05 17:00
                    # until the user spoke again, or the scoring window's end if the user did not
                    state = f"; window to reply {turn['reply_window_s'] * 1000:.0f} ms{state}"
                lines.append(
                    f"| {row['dialogue']} | missed turn | {turn['end_s']:.2f} s | {state.lstrip('; ')} | "
                    f"{name} ({voice}) |"
                )
        for index, pause in enumerate(row["pauses"]):
            if pause["taken_over_after_s"] is not None:
                after = f"{_known(pause['words_before'])} of {_known(pause['turn_words'])}"
                state = _state_text(pause, confusion.get((number, "pauses", index)), "turn ends")
                if pause.get("state_log_odds_at_take_over") is not None:
                    state += f", {pause['state_log_odds_at_take_over']:+.2f} when it began"
                lines.append(
                    f"| {row['dialogue']} | take-over | {pause['start_s']:.2f} s | {pause['length_s']:.2f} s "
                    f"pause after word {after}, "
                    f"onset {pause['taken_over_after_s'] * 1000:.0f} ms in{state} | {name} ({voice}) |"
                )
        for barge_in in row.get("barge_ins", []):
            if not barge_in["while_speaking"] or barge_in["stopped_in_time"]:
                continue
            latency = barge_in["stop_latency_s"]
            detail = "never stopped" if latency is None else f"stopped after {latency * 1000:.0f} ms"
            lines.append(
                f"| {row['dialogue']} | late stop | {barge_in['at_s']:.2f} s | barge-in {detail} | "
                f"{name} ({voice}) |"
            )
    if not lines:
        return []
    header = "| dialogue | event | at (turn end / pause start / barge-in) | detail | user voice |"
    return ["", header, "| --- | --- | --- | --- | --- |", *lines]
