"""What a full-duplex system is judged by, as pure functions of frame-level activity and events.

Activity is a boolean per frame (the model speaks or not), read either from the model's speaking
probability or, independently, from the energy of its output audio. Events come from the
reference manifest (user ends of turn, barge-ins, internal pauses). Times are in seconds.
Definitions follow Full-Duplex-Bench and NeMo's turn-taking metrics:

- response latency: user end of turn -> first system onset after it (missed if none before the
  user speaks again or `window` seconds pass);
- barge-in stop latency: user barge-in onset while the system speaks -> the system is silent
  (ignored if it does not stop within `window`);
- false take-over: the system starts speaking inside a user's internal pause;
- talk-over: the system starts speaking while the user is speaking a turn (not in a pause: that is a
  take-over; not during a barge-in: there the system is expected to be speaking and must stop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from s2s.data.manifest import Manifest


def activity_from_probability(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return np.asarray(probability) >= threshold


def activity_from_energy(
    audio: np.ndarray, samples_per_frame: int, threshold_db: float = -40.0
) -> np.ndarray:
    """A frame is active when the RMS of its samples is above `threshold_db` dBFS."""
    frames = len(audio) // samples_per_frame
    chunks = np.asarray(audio[: frames * samples_per_frame], dtype=np.float64).reshape(
        frames, samples_per_frame
    )
    rms_db = 10 * np.log10(np.mean(chunks**2, axis=1) + 1e-12)
    return rms_db > threshold_db


def onsets(active: np.ndarray) -> np.ndarray:
    """Frame indices where activity switches on (frame 0 counts when it starts active)."""
    active = np.asarray(active, dtype=bool)
    previous = np.concatenate([[False], active[:-1]])
    return np.flatnonzero(active & ~previous)


def first_onset_after(active: np.ndarray, frame_seconds: float, start: float, end: float) -> float | None:
    """Time of the first onset in [start, end). A system already speaking when the window opens
    has not responded to what just happened: only a new onset counts."""
    times = onsets(active) * frame_seconds
    inside = times[(times >= start - 1e-9) & (times < end)]
    return float(inside[0]) if inside.size else None


def first_silence_after(active: np.ndarray, frame_seconds: float, start: float, end: float) -> float | None:
    """Time of the first inactive frame at or after `start` and before `end`."""
    first = int(np.ceil(start / frame_seconds - 1e-9))
    last = min(len(active), int(np.ceil(end / frame_seconds)))
    silent = np.flatnonzero(~np.asarray(active[first:last], dtype=bool))
    return float((first + silent[0]) * frame_seconds) if silent.size else None


@dataclass
class EventTimes:
    """Reference events of one dialogue, in seconds."""

    turn_ends: list[float]  # user end of turn
    next_user_starts: list[float]  # when the user speaks next after each turn end (inf if never)
    barge_ins: list[float]  # user barge-in onsets
    pauses: list[tuple[float, float]]  # user internal pauses (start, end)
    # the user speaking a turn (start, end): turns minus their internal pauses, barge-ins excluded
    user_speech: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class DuplexScores:
    response_latencies: list[float]
    missed_responses: int
    barge_in_stop_latencies: list[float]
    ignored_barge_ins: int
    barge_ins_while_silent: int  # the model was not speaking when the user barged in
    false_takeovers: int
    pauses: int
    talk_overs: int = 0  # system onsets while the user speaks a turn
    # (user end of turn, answered within the window) per turn: where in a dialogue replies go missing
    turn_outcomes: list[tuple[float, bool]] = field(default_factory=list)
    # (pause length, seconds into the pause of the system's onset or None) per internal pause
    pause_outcomes: list[tuple[float, float | None]] = field(default_factory=list)
    # (onset, the system was speaking then, seconds until it fell silent or None: ignored) per barge-in
    barge_in_outcomes: list[tuple[float, bool, float | None]] = field(default_factory=list)
    # (seconds the turn left for a reply, answered) per turn: the window ends where the user speaks
    # again, which after a turn the reference reply was barged in on is ~0.6 s after the turn's end
    reply_window_outcomes: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def turns(self) -> int:
        return len(self.response_latencies) + self.missed_responses

    @property
    def talk_overs_per_turn(self) -> float | None:
        return self.talk_overs / self.turns if self.turns else None


def score_dialogue(
    active: np.ndarray, frame_seconds: float, events: EventTimes, window: float = 3.0
) -> DuplexScores:
    latencies, missed, outcomes, window_outcomes = [], 0, [], []
    for end, next_start in zip(events.turn_ends, events.next_user_starts, strict=True):
        closes = min(next_start, end + window)
        onset = first_onset_after(active, frame_seconds, end, closes)
        outcomes.append((end, onset is not None))
        window_outcomes.append((closes - end, onset is not None))
        if onset is None:
            missed += 1
        else:
            latencies.append(onset - end)
    stops, ignored, silent, barge_in_outcomes = [], 0, 0, []
    for onset in events.barge_ins:
        frame = int(np.floor(onset / frame_seconds + 1e-9))
        if frame >= len(active) or not active[frame]:
            silent += 1
            barge_in_outcomes.append((onset, False, None))
            continue
        stop = first_silence_after(active, frame_seconds, onset, onset + window)
        if stop is None:
            ignored += 1
        else:
            stops.append(stop - onset)
        barge_in_outcomes.append((onset, True, None if stop is None else stop - onset))
    pause_outcomes = []
    for start, end in events.pauses:
        onset = first_onset_after(active, frame_seconds, start, end)
        pause_outcomes.append((end - start, None if onset is None else max(0.0, onset - start)))
    false_takeovers = sum(onset is not None for _, onset in pause_outcomes)
    return DuplexScores(
        latencies,
        missed,
        stops,
        ignored,
        silent,
        false_takeovers,
        len(events.pauses),
        talk_overs(active, frame_seconds, events.user_speech),
        outcomes,
        pause_outcomes,
        barge_in_outcomes,
        reply_window_outcomes=window_outcomes,
    )


TURN_END_BUCKETS = (0.0, 20.0, 40.0)  # seconds into the dialogue: training windows were 40 s long
PAUSE_LENGTH_BUCKETS = (0.0, 0.55)  # seconds: the corpus's pauses last 0.3-0.8 s, its reply gap 0.2-0.6 s
# seconds a turn leaves for a reply: under 1 s the user speaks again at once (in the corpus, a barge-in
# 0.1-0.3 s into a reference reply that began 0.2-0.6 s after the turn: p50 0.63 s on the test split)
REPLY_WINDOW_BUCKETS = (0.0, 1.0)


def _bucketed(outcomes: list[tuple[float, object]], starts: tuple[float, ...]):
    """Per bucket [start, next start) of the outcomes' keys: the bucket's bounds as reported (the
    last one open: None) and the values of the outcomes whose key falls in it."""
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else float("inf")
        values = [value for key, value in outcomes if start <= key < stop]
        yield {"from_s": start, "to_s": None if stop == float("inf") else stop}, values


def missed_by_turn_end(
    outcomes: list[tuple[float, bool]], starts: tuple[float, ...] = TURN_END_BUCKETS
) -> list[dict]:
    """Missed responses by when the user's turn ended, one row per bucket [start, next start): a
    model that fails past the length of its training windows shows it here, not in the mean. (On
    the test split a quarter of the turns ending past 40 s are turns the user barges in after, a
    tenth before: read it beside `missed_by_reply_window`.)"""
    return _missed_rows(outcomes, starts)


def missed_by_reply_window(
    outcomes: list[tuple[float, bool]], starts: tuple[float, ...] = REPLY_WINDOW_BUCKETS
) -> list[dict]:
    """Missed responses by how long the turn left for a reply before the user spoke again (or the
    scoring window closed). The user channel is replayed as recorded, so after a turn whose reference
    reply the user barged in on, a model that answers later than the reference meets the barge-in
    first: those turns are missed far more often, and where they gather (late in long dialogues, in
    the test split) the misses do too."""
    return _missed_rows(outcomes, starts)


def _missed_rows(outcomes: list[tuple[float, bool]], starts: tuple[float, ...]) -> list[dict]:
    rows = []
    for bounds, inside in _bucketed(outcomes, starts):
        missed = sum(not answered for answered in inside)
        rows.append(
            {
                **bounds,
                "turns": len(inside),
                "missed": missed,
                "missed_rate": missed / len(inside) if inside else None,
            }
        )
    return rows


def takeovers_by_pause_length(
    outcomes: list[tuple[float, float | None]], starts: tuple[float, ...] = PAUSE_LENGTH_BUCKETS
) -> list[dict]:
    """False take-overs by how long the user paused, one row per bucket [start, next start), with
    when in the pause the system started (p50): take-overs late in long pauses are a wait that is
    too short (the reply gap is 0.2-0.6 s), early ones a pause heard as an end of turn."""
    rows = []
    for bounds, onsets in _bucketed(outcomes, starts):
        taken = [onset for onset in onsets if onset is not None]
        rows.append(
            {
                **bounds,
                "pauses": len(onsets),
                "takeovers": len(taken),
                "takeover_rate": len(taken) / len(onsets) if onsets else None,
                "onset_into_pause_p50_s": float(np.median(taken)) if taken else None,
            }
        )
    return rows


def talk_overs(active: np.ndarray, frame_seconds: float, speech: list[tuple[float, float]]) -> int:
    """Onsets strictly inside the user's speech intervals. An onset at a turn's end is a response
    and one at the start of a pause a take-over, so the interval ends do not count here."""
    times = onsets(active) * frame_seconds
    return sum(int(np.count_nonzero((times > start + 1e-9) & (times < end - 1e-9))) for start, end in speech)


def events_from_manifest(manifest: Manifest) -> EventTimes:
    """The reference events of one dialogue, read from its manifest."""
    user = sorted((s for s in manifest.segments if s.speaker == "user"), key=lambda s: s.start)
    speech_starts = [s.start for s in user if s.kind in ("turn", "barge-in")]
    pauses = [(s.start, s.end) for s in user if s.kind == "pause"]
    turn_ends, next_starts, speech = [], [], []
    for turn in (s for s in user if s.kind == "turn"):
        turn_ends.append(turn.end)
        later = [t for t in speech_starts if t > turn.end]
        next_starts.append(later[0] if later else float("inf"))
        inside = [(start, end) for start, end in pauses if turn.start <= start and end <= turn.end]
        speech += _without(turn.start, turn.end, inside)
    return EventTimes(
        turn_ends=turn_ends,
        next_user_starts=next_starts,
        barge_ins=[s.start for s in user if s.kind == "barge-in"],
        pauses=pauses,
        user_speech=speech,
    )


def _without(start: float, end: float, holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """[start, end) less the holes inside it, as a list of non-empty intervals."""
    parts, cursor = [], start
    for hole_start, hole_end in sorted(holes):
        if hole_start > cursor:
            parts.append((cursor, hole_start))
        cursor = max(cursor, hole_end)
    if end > cursor:
        parts.append((cursor, end))
    return parts


def summarize(values: list[float]) -> dict:
    """mean / p50 / p90 (None when there are no values)."""
    if not values:
        return {"mean": None, "p50": None, "p90": None, "count": 0}
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "count": len(values),
    }
