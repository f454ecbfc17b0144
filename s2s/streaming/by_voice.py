"""The judged figures split by the user's voice: voices seen in training against held-out ones.

The synthetic test split gives half its dialogues a user voice that never speaks in training
(s2s/data/synth.py, `UserVoices`); the validation split has seen voices only unless the recipe holds
out val voices of its own. So the operating point chosen on val can be right for seen voices and
wrong for unseen ones (a take-over rate of 0.041 on val became 0.143 on test for one base model):
this split says whether the gap is the voices.
Dialogues whose manifest does not say (recordings) are left out of both groups.
"""

from __future__ import annotations

from s2s.streaming.report import turn_taking
from s2s.streaming.runner import StreamedDialogue

GROUPS = ("seen", "held_out")


def user_voice_record(dialogue: StreamedDialogue) -> dict:
    """The user voice the dialogue's manifest records (synth.py: espeak name, rate, pitch, pitch
    range, held_out); {} where it records none (recordings)."""
    info = dialogue.manifest.info if dialogue.manifest is not None else {}
    voice = info.get("user_voice") if isinstance(info, dict) else None
    return voice if isinstance(voice, dict) else {}


def user_voice_group(dialogue: StreamedDialogue) -> str | None:
    """'held_out' or 'seen' as the dialogue's manifest records its user voice; None if it does not."""
    held_out = user_voice_record(dialogue).get("held_out")
    if not isinstance(held_out, bool):
        return None
    return "held_out" if held_out else "seen"


def by_user_voice(
    dialogues: list[StreamedDialogue], config, window: float, content: dict | None = None
) -> dict:
    """Per group (only groups with dialogues): dialogues, turns, missed responses, pauses and
    take-overs (read from the speaking probability) and, given `content` (reply_content's result),
    the complete replies and how many had exactly the right words (the recognizer's)."""
    result = {}
    for group in GROUPS:
        members = [d for d in dialogues if user_voice_group(d) == group]
        if not members:
            continue
        scores = turn_taking(members, config, window, sources=("probability",))["probability"]
        figures = {
            "dialogues": len(members),
            "turns": scores["turns"],
            "missed_response_rate": scores["missed_response_rate"],
            "pauses": scores["pauses"],
            "false_takeovers_per_pause": scores["false_takeovers_per_pause"],
        }
        if content is not None:
            names = {d.name for d in members}
            complete = [r for r in content["replies"] if r["dialogue"] in names and not r["cut_off"]]
            figures["complete_replies"] = len(complete)
            figures["exact_replies"] = sum(bool(r["exact"]) for r in complete)
        result[group] = figures
    return result


def by_voice_rows(split: dict) -> list[str]:
    """Markdown rows for metrics.md: one per group."""
    if not split:
        return []

    def count(rate, total) -> str:
        return "n/a" if rate is None else f"{round(rate * total)} of {total} ({rate:.3f})"

    rows = [
        "",
        "| user voice (speaking probability) | dialogues | missed responses | false take-overs | "
        "exact replies (recognizer) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for group, figures in split.items():
        exact = (
            f"{figures['exact_replies']} of {figures['complete_replies']}"
            if "exact_replies" in figures
            else "n/a"
        )
        rows.append(
            f"| {group.replace('_', '-')} | {figures['dialogues']} | "
            f"{count(figures['missed_response_rate'], figures['turns'])} | "
            f"{count(figures['false_takeovers_per_pause'], figures['pauses'])} | {exact} |"
        )
    return rows
