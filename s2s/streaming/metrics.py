"""What a full-duplex system is judged by, as pure functions of frame-level activity and events.

Activity is a boolean per frame (the model speaks or not), read either from the model's speaking
probability or, independently, from the energy of its output audio. Events come from the
reference manifest (user ends of turn, barge-ins, internal pauses). Times are in seconds.
Definitions follow Full-Duplex-Bench and NeMo's turn-taking metrics:

- response latency: user end of turn -> first system onset after it (missed if none before the
  user speaks again or `window` seconds pass);
- barge-in stop latency: user barge-in onset while the system speaks -> the system is silent
  (ignored if it does not stop within `window`);
- false take-over: the system starts speaking inside a user's internal pause.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


@dataclass
class DuplexScores:
    response_latencies: list[float]
    missed_responses: int
    barge_in_stop_latencies: list[float]
    ignored_barge_ins: int
    barge_ins_while_silent: int  # the model was not speaking when the user barged in
    false_takeovers: int
    pauses: int

    @property
    def turns(self) -> int:
        return len(self.response_latencies) + self.missed_responses


def score_dialogue(
    active: np.ndarray, frame_seconds: float, events: EventTimes, window: float = 3.0
) -> DuplexScores:
    latencies, missed = [], 0
    for end, next_start in zip(events.turn_ends, events.next_user_starts, strict=True):
        onset = first_onset_after(active, frame_seconds, end, min(next_start, end + window))
        if onset is None:
            missed += 1
        else:
            latencies.append(onset - end)
    stops, ignored, silent = [], 0, 0
    for onset in events.barge_ins:
        frame = int(np.floor(onset / frame_seconds + 1e-9))
        if frame >= len(active) or not active[frame]:
            silent += 1
            continue
        stop = first_silence_after(active, frame_seconds, onset, onset + window)
        if stop is None:
            ignored += 1
        else:
            stops.append(stop - onset)
    false_takeovers = sum(
        first_onset_after(active, frame_seconds, start, end) is not None for start, end in events.pauses
    )
    return DuplexScores(latencies, missed, stops, ignored, silent, false_takeovers, len(events.pauses))


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


def mel_cepstra(log_mel: np.ndarray, coefficients: int = 13) -> np.ndarray:
    """Cepstra of log-mel frames (orthonormal DCT-II), dropping c0 (energy): (frames, coefficients - 1)."""
    n = log_mel.shape[1]
    k = np.arange(n)
    basis = np.cos(np.pi / n * (k[None, :] + 0.5) * np.arange(coefficients)[:, None]) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return (np.asarray(log_mel, dtype=np.float64) @ basis.T)[:, 1:]


def dtw_path_cost(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Dynamic time warping of frame sequences a, b by Euclidean distance: (total cost, path length)."""
    distance = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    cost = np.full((len(a) + 1, len(b) + 1), np.inf)
    steps = np.zeros_like(cost, dtype=np.int64)
    cost[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            options = (cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1])
            best = int(np.argmin(options))
            previous = ((i - 1, j - 1), (i - 1, j), (i, j - 1))[best]
            cost[i, j] = distance[i - 1, j - 1] + options[best]
            steps[i, j] = steps[previous] + 1
    return float(cost[-1, -1]), int(steps[-1, -1])


def mel_cepstral_distortion(
    reference_log_mel: np.ndarray, predicted_log_mel: np.ndarray, pool: int = 1
) -> float:
    """MCD in dB between DTW-aligned cepstra: (10 / ln 10) * sqrt(2) * mean aligned distance.

    `pool` averages that many consecutive log-mel frames first (4: 40 ms frames), which makes the
    quadratic alignment 16x cheaper on long dialogues.
    """
    if pool > 1:
        reference_log_mel = _pooled(reference_log_mel, pool)
        predicted_log_mel = _pooled(predicted_log_mel, pool)
    ref, pred = mel_cepstra(reference_log_mel), mel_cepstra(predicted_log_mel)
    if len(ref) == 0 or len(pred) == 0:
        return float("nan")
    total, length = dtw_path_cost(ref, pred)
    return float(10.0 / np.log(10.0) * np.sqrt(2.0) * total / length)


def _pooled(frames: np.ndarray, pool: int) -> np.ndarray:
    usable = len(frames) // pool * pool
    return np.asarray(frames[:usable], dtype=np.float64).reshape(-1, pool, frames.shape[1]).mean(axis=1)
