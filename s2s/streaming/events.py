"""Every judged event of every dialogue, one by one: which turn was missed, which pause taken over.

The rates in metrics.json say how often; these rows say where (dialogue, time, voice, pause length,
how long the model waited), so a researcher can open the dialogue's audio at the spot instead of
re-streaming the split to find it. Read from the speaking probability, as the headline rates are.
"""

from __future__ import annotations

from s2s.models.config import DuplexConfig
from s2s.streaming import metrics
from s2s.streaming.by_voice import user_voice_group, user_voice_record
from s2s.streaming.report import activity
from s2s.streaming.runner import StreamedDialogue


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


def dialogue_events(dialogues: list[StreamedDialogue], config: DuplexConfig, window: float) -> list[dict]:
    """Per dialogue with a manifest: its user voice, each turn end (answered after how long, or
    missed) and each internal pause (its length and, if the model took it over, how far in)."""
    frame_seconds = config.frame_samples / config.sample_rate
    rows = []
    for dialogue in dialogues:
        if dialogue.manifest is None:
            continue
        events = metrics.events_from_manifest(dialogue.manifest)
        active = activity(dialogue, config, "probability", energy_db=-40.0)
        scores = metrics.score_dialogue(active, frame_seconds, events, window)
        latencies = iter(scores.response_latencies)
        turns = [
            {"end_s": _rounded(end), "latency_s": _rounded(next(latencies)) if answered else None}
            for end, answered in scores.turn_outcomes
        ]
        words = _words_around_pauses(dialogue.manifest)
        pauses = [
            {
                "start_s": _rounded(start),
                "length_s": _rounded(length),
                "taken_over_after_s": _rounded(onset),
                "words_before": before,  # of the turn's words, how many ended before the pause
                "turn_words": total,
            }
            for (start, _), (length, onset), (before, total) in zip(
                events.pauses, scores.pause_outcomes, words, strict=True
            )
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
            }
        )
    return rows


def failure_rows(rows: list[dict]) -> list[str]:
    """Markdown: one line per missed turn and per pause taken over (where to listen), [] if none."""
    lines = []
    for row in rows:
        voice = "held-out" if row["held_out_voice"] else "seen" if row["held_out_voice"] is False else "?"
        name = (row["user_voice"] or {}).get("name", "?")
        for turn in row["turns"]:
            if turn["latency_s"] is None:
                lines.append(
                    f"| {row['dialogue']} | missed turn | {turn['end_s']:.2f} s | | {name} ({voice}) |"
                )
        for pause in row["pauses"]:
            if pause["taken_over_after_s"] is not None:
                after = f"{_known(pause['words_before'])} of {_known(pause['turn_words'])}"
                lines.append(
                    f"| {row['dialogue']} | take-over | {pause['start_s']:.2f} s | {pause['length_s']:.2f} s "
                    f"pause after word {after}, "
                    f"onset {pause['taken_over_after_s'] * 1000:.0f} ms in | {name} ({voice}) |"
                )
    if not lines:
        return []
    header = "| dialogue | event | at (turn end / pause start) | detail | user voice |"
    return ["", header, "| --- | --- | --- | --- | --- |", *lines]
