"""From streamed dialogues to the figures a full-duplex system is judged by.

Turn-taking (s2s.streaming.metrics) is read twice: from the model's speaking probability (its own
decision) and from the energy of its output audio (what a listener hears). Content
(s2s.streaming.content) needs a recognizer: it reads the model's audio back into words over each
reference reply's window, and reads the reference channel over the same windows (its ceiling).
"""

from __future__ import annotations

import numpy as np
import torch

from s2s.data.features import LogMel
from s2s.data.tokens import SPECIALS
from s2s.models.config import DuplexConfig
from s2s.streaming import content, metrics
from s2s.streaming.intervals import wilson_interval
from s2s.streaming.mcd import mel_cepstral_distortion
from s2s.streaming.runner import StreamedDialogue, StreamRun

SOURCES = ("probability", "energy")
# A reply the user cut off is heard until this long after the barge-in's onset (the reference falls
# silent 0.07-0.22 s after it; the user's next turn comes later than this): its last word is whole.
CUT_OFF_SECONDS = 1.0


def activity(dialogue: StreamedDialogue, config: DuplexConfig, source: str, energy_db: float) -> np.ndarray:
    """Per model frame: does the model speak? From its speaking probability or its audio's energy."""
    if source == "probability":
        return metrics.activity_from_probability(dialogue.speaking)
    if dialogue.audio is None:
        raise ValueError("activity from energy needs the model's audio: stream with the vocoder on")
    return metrics.activity_from_energy(dialogue.audio, config.frame_samples, energy_db)


STOP_WITHIN_S = 0.3  # a barge-in counts as stopped in time when the model fell silent within this


def turn_taking(
    dialogues: list[StreamedDialogue],
    config: DuplexConfig,
    window: float,
    energy_db: float = -40.0,
    sources: tuple[str, ...] = SOURCES,
) -> dict:
    """Response, barge-in, take-over and talk-over scores over all dialogues, per activity source."""
    frame_seconds = config.frame_samples / config.sample_rate
    report = {}
    for source in sources:
        scores = [
            metrics.score_dialogue(
                activity(d, config, source, energy_db),
                frame_seconds,
                metrics.events_from_manifest(d.manifest),
                window,
            )
            for d in dialogues
            if d.manifest is not None
        ]
        latencies = [x for s in scores for x in s.response_latencies]
        stops = [x for s in scores for x in s.barge_in_stop_latencies]
        turns = sum(s.turns for s in scores)
        missed = sum(s.missed_responses for s in scores)
        ignored = sum(s.ignored_barge_ins for s in scores)
        silent = sum(s.barge_ins_while_silent for s in scores)
        pauses = sum(s.pauses for s in scores)
        takeovers = sum(s.false_takeovers for s in scores)
        talk_overs = sum(s.talk_overs for s in scores)
        stopped_in_time = sum(x <= STOP_WITHIN_S for x in stops)
        spoken_over = len(stops) + ignored  # barge-ins that came while the model spoke
        report[source] = {
            "response_latency_s": metrics.summarize(latencies),
            "missed_response_rate": _rate(missed, turns),
            "barge_in_stop_latency_s": metrics.summarize(stops),
            "ignored_barge_in_rate": _rate(ignored, spoken_over),
            # issue 16's barge-in bar: the share of barge-ins (while it spoke) stopped within 300 ms
            "barge_ins_stopped_within_300ms": _rate(stopped_in_time, spoken_over),
            "barge_ins_while_silent": silent,
            "false_takeovers_per_pause": _rate(takeovers, pauses),
            "talk_overs_per_turn": _rate(talk_overs, turns),
            "talk_overs": talk_overs,
            "missed_responses": missed,
            "false_takeovers": takeovers,
            # 95% Wilson intervals of the shares above (s2s/streaming/intervals.py); None without
            # events. Not for talk-overs: they count onsets, several of which may fall in one turn.
            "intervals": {
                "missed_response_rate": wilson_interval(missed, turns),
                "ignored_barge_in_rate": wilson_interval(ignored, spoken_over),
                "barge_ins_stopped_within_300ms": wilson_interval(stopped_in_time, spoken_over),
                "false_takeovers_per_pause": wilson_interval(takeovers, pauses),
            },
            "turns": turns,
            "missed_by_turn_end": metrics.missed_by_turn_end([x for s in scores for x in s.turn_outcomes]),
            "missed_by_reply_window": metrics.missed_by_reply_window(
                [x for s in scores for x in s.reply_window_outcomes]
            ),
            "takeovers_by_pause_length": metrics.takeovers_by_pause_length(
                [x for s in scores for x in s.pause_outcomes]
            ),
            "barge_ins": spoken_over + silent,
            "pauses": pauses,
        }
    return report


def token_words(tokens: np.ndarray, words: tuple[str, ...]) -> tuple[str, ...]:
    """The words among a span of sampled system tokens (ids from len(SPECIALS) on), in order."""
    first = len(SPECIALS)
    if tokens.size and int(tokens.max()) >= first + len(words):
        raise ValueError(
            f"token id {int(tokens.max())} is outside the vocabulary of {len(words)} words: the "
            "vocabulary is not the one the model was trained with"
        )
    return tuple(words[int(t) - first] for t in tokens if t >= first)


def reply_content(
    dialogues: list[StreamedDialogue],
    config: DuplexConfig,
    recognizer,
    vocabulary: tuple[str, ...] | None = None,
) -> dict:
    """Words recognized in the model's output and in the reference over every reply window.

    The window runs from the user's end of turn until the user speaks again, or, for a reply the
    user cut off, until CUT_OFF_SECONDS after the barge-in. Rows carry the model's onset in the
    window (seconds after the user's end of turn, from its speaking probability) and how long it
    spoke there. With the system's word `vocabulary` and a model that samples tokens (model v2), the
    words of its sampled tokens in the same windows are scored too ("tokens": what it chose to say,
    before its mel and the vocoder), which tells wrong words from words said unclearly.
    """
    from s2s.recognizer import reply_windows

    frame_seconds = config.frame_samples / config.sample_rate
    windows, model_audio, reference_audio = [], [], []
    for dialogue in dialogues:
        if dialogue.manifest is None:
            continue
        if dialogue.audio is None:
            raise ValueError("content scoring needs the model's audio: stream with the vocoder on")
        for reply in reply_windows(dialogue.manifest):
            end = reply.end
            if reply.barge_in is not None:  # the words said before the stop, not cut mid-word
                end = min(reply.barge_in + CUT_OFF_SECONDS, dialogue.seconds)
            first, last = (round(t * config.sample_rate) for t in (reply.start, end))
            windows.append((dialogue, reply, end))
            model_audio.append(dialogue.audio[first:last])
            reference_audio.append(dialogue.reference[first:last])
    if not windows:
        return {"model": None, "reference": None, "replies": []}
    heard = recognizer.transcribe(model_audio, sample_rate=config.sample_rate)
    ceiling = recognizer.transcribe(reference_audio, sample_rate=config.sample_rate)
    model_rows, reference_rows, token_rows = [], [], []
    spoken_by_dialogue = {id(d): metrics.activity_from_probability(d.speaking) for d in dialogues}
    for (dialogue, reply, end), words, reference_words in zip(windows, heard, ceiling, strict=True):
        spoken = spoken_by_dialogue[id(dialogue)]
        first = int(np.ceil(reply.start / frame_seconds - 1e-9))
        last = min(len(spoken), int(np.ceil(end / frame_seconds - 1e-9)))
        active = np.flatnonzero(spoken[first:last])
        onset = float((first + active[0]) * frame_seconds - reply.start) if active.size else None
        common = {"cut_off": reply.kind != "reply", "dialogue": dialogue.name, "exchange": reply.exchange}
        model_rows.append(
            content.score_reply(
                reply.words, words, onset=onset, duration=active.size * frame_seconds, **common
            )
        )
        reference_rows.append(content.score_reply(reply.words, reference_words, **common))
        tokens = dialogue.feedback
        if vocabulary is not None and tokens.dim() == 1:  # model v2: one sampled token per frame
            span = tokens[first:last].cpu().numpy()
            token_rows.append(content.score_reply(reply.words, token_words(span, vocabulary), **common))
    return {
        "model": content.summarize_replies(model_rows).to_json(),
        "reference": content.summarize_replies(reference_rows).to_json(),
        "tokens": content.summarize_replies(token_rows).to_json() if token_rows else None,
        "replies": [
            {**row.to_json(), "reference_recognized": list(ref.recognized)}
            for row, ref in zip(model_rows, reference_rows, strict=True)
        ],
    }


def quality(dialogues: list[StreamedDialogue], mcd_seconds: float) -> dict:
    """Mel L1 (nats) of the model's log-mel against the reference channel's, and MCD (dB, DTW) of
    the model's audio against the reference audio over each dialogue's first `mcd_seconds`."""
    front_end = LogMel()
    l1, mcd = [], []
    for dialogue in dialogues:
        reference = front_end(torch.from_numpy(dialogue.reference)[None])[0].numpy()
        frames = min(len(reference), len(dialogue.mel))
        l1.append(float(np.abs(reference[:frames] - dialogue.mel[:frames]).mean()))
        if dialogue.audio is not None:
            samples = min(
                len(dialogue.audio), len(dialogue.reference), int(mcd_seconds * dialogue.sample_rate)
            )
            mcd.append(
                mel_cepstral_distortion(
                    dialogue.reference[:samples], dialogue.audio[:samples], dialogue.sample_rate
                )
            )
    return {
        "mel_l1": float(np.mean(l1)) if l1 else None,
        "mcd_db": float(np.nanmean(mcd)) if mcd else None,
        "mcd_seconds_per_dialogue": mcd_seconds,
    }


def free_running_summary(run: StreamRun, config: DuplexConfig, window: float, recognizer=None) -> dict:
    """Flat figures for training logs, read from the speaking probability, and one score.

    `score` (higher is better, in [0, 1]) is the product of: response rate, 1 - false take-overs
    per pause, 1 - talk-overs per turn, the share of barge-ins stopped within STOP_WITHIN_S (issue
    16's bar; until 2026-12-05 the share stopped at all, which a late stop did not lower) and, with a
    recognizer, reply exact match (each clipped to [0, 1]; undefined ones left out). A product, so
    that a model that never speaks (no take-overs, no talk-overs) or one that never stops cannot
    score well.
    """
    scores = turn_taking(run.dialogues, config, window, sources=("probability",))["probability"]
    summary = {
        "response_rate": _complement(scores["missed_response_rate"]),
        "response_latency_p50": scores["response_latency_s"]["p50"],
        "response_latency_p90": scores["response_latency_s"]["p90"],
        "false_takeovers_per_pause": scores["false_takeovers_per_pause"],
        "talk_overs_per_turn": scores["talk_overs_per_turn"],
        "barge_in_stop_latency_p50": scores["barge_in_stop_latency_s"]["p50"],
        "barge_in_stop_rate": _complement(scores["ignored_barge_in_rate"]),
        "barge_ins_stopped_within_300ms": scores["barge_ins_stopped_within_300ms"],
    }
    parts = [
        summary["response_rate"],
        _complement(summary["false_takeovers_per_pause"]),
        _complement(summary["talk_overs_per_turn"]),
        summary["barge_ins_stopped_within_300ms"],
    ]
    if recognizer is not None:
        words = reply_content(run.dialogues, config, recognizer)["model"]
        summary["exact_match"] = None if words is None else words["exact_match_rate"]
        summary["word_error_rate"] = None if words is None else words["word_error_rate"]
        parts.append(summary["exact_match"])
    known = [min(1.0, max(0.0, p)) for p in parts if p is not None]
    summary["score"] = float(np.prod(known)) if known else None
    return summary


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def _complement(rate: float | None) -> float | None:
    return None if rate is None else 1.0 - rate
