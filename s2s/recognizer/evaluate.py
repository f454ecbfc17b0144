"""A recognizer's scores on a split's reply windows, per variant (reference channel, vocoder round trips)."""

from __future__ import annotations

from s2s.recognizer.features import REFERENCE, WindowFeatures
from s2s.recognizer.recognizer import Recognizer
from s2s.streaming.content import score_reply, summarize_replies


def evaluate_windows(recognizer: Recognizer, features: WindowFeatures, examples: int = 5) -> dict:
    """Complete replies: exact match and WER per variant. Cut-off replies (their words were not all
    spoken): how often the recognized words are a non-empty prefix of the planned ones, and how many."""
    scores = {}
    for variant in dict.fromkeys(features.variants):
        for kind in dict.fromkeys(features.kinds):
            subset = features.where(variant=variant, kind=kind)
            recognized = recognizer.transcribe_log_mel([subset.window_mel(i) for i in range(len(subset))])
            expected = [list(w) for w in subset.words]
            summary = summarize_replies(
                score_reply(e, r, cut_off=kind != "reply") for e, r in zip(expected, recognized, strict=True)
            )
            if kind == "reply":
                record = {
                    "replies": summary.complete,
                    "exact_match": summary.exact_match_rate if summary.complete else float("nan"),
                    "wer": summary.word_error_rate if summary.expected_words else float("nan"),
                    "word_errors": summary.word_errors,
                    "expected_words": summary.expected_words,
                }
                record["errors"] = [
                    {"dialogue": subset.dialogues[i], "exchange": subset.exchanges[i],
                     "expected": " ".join(expected[i]), "recognized": " ".join(recognized[i])}
                    for i in range(len(subset)) if recognized[i] != expected[i]
                ][:examples]  # fmt: skip
                scores[variant] = record
            else:
                # only right words, and at least one, before stopping
                scores[f"{variant} ({kind})"] = {
                    "replies": len(subset),
                    "prefix_rate": summary.cut_off_prefix_rate if summary.cut_off else float("nan"),
                    "mean_recognized_words": sum(map(len, recognized)) / max(1, len(subset)),
                    "mean_planned_words": sum(map(len, expected)) / max(1, len(subset)),
                }
    return scores


def summary_lines(scores: dict, split: str) -> list[str]:
    lines = []
    for name, record in scores.items():
        if "exact_match" in record:
            ceiling = " (the recognizer's ceiling)" if name == REFERENCE else ""
            lines.append(
                f"{split} {name:<22} exact match {100 * record['exact_match']:6.2f}%  "
                f"WER {100 * record['wer']:5.2f}%  ({record['replies']} replies){ceiling}"
            )
        else:
            lines.append(
                f"{split} {name:<22} recognized words are a non-empty prefix of the planned reply in "
                f"{100 * record['prefix_rate']:.1f}% ({record['replies']} replies; "
                f"{record['mean_recognized_words']:.2f} of {record['mean_planned_words']:.2f} words on avg.)"
            )
    return lines
