"""ROC figures of a detector: AUC, detection at a fixed false-alarm rate, false alarms at a fixed detection.

Why these: a turn-taking decision trades two errors. Scoring "this silence is a pause", a detection
missed is a take-over (the system speaks into the user's pause); a false alarm on an end of turn is a
late reply (the system waits for more). The detection rate at "at most x% of turn ends called pauses"
and the false-alarm rate at "95% of pauses detected" read directly as those two error rates.

A silence is called a pause when its score is >= the threshold; every threshold between distinct
scores is considered, so the figures are the best any threshold achieves on these scores (the ROC's
operating points), not the figures of one threshold fixed in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RocPoints:
    """The operating points of scores for positives and negatives, strictest threshold first."""

    detection: np.ndarray  # fraction of positives scored >= threshold
    false_alarm: np.ndarray  # fraction of negatives scored >= threshold

    @classmethod
    def of(cls, positives: np.ndarray, negatives: np.ndarray) -> RocPoints:
        positives, negatives = _scores(positives, "positives"), _scores(negatives, "negatives")
        thresholds = np.unique(np.concatenate([positives, negatives]))[::-1]
        detected = np.searchsorted(np.sort(positives), thresholds, side="left")
        alarmed = np.searchsorted(np.sort(negatives), thresholds, side="left")
        detection = np.concatenate([[0.0], 1.0 - detected / len(positives)])
        false_alarm = np.concatenate([[0.0], 1.0 - alarmed / len(negatives)])
        return cls(detection, false_alarm)

    def detection_at(self, false_alarm: float) -> float:
        """The highest detection rate of a threshold that calls at most `false_alarm` of negatives."""
        return float(self.detection[self.false_alarm <= false_alarm + 1e-12].max())

    def false_alarm_at(self, detection: float) -> float:
        """The lowest false-alarm rate of a threshold that detects at least `detection` of positives."""
        return float(self.false_alarm[self.detection >= detection - 1e-12].min())


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney statistic)."""
    positives, negatives = _scores(positives, "positives"), _scores(negatives, "negatives")
    ordered = np.sort(negatives)
    below = np.searchsorted(ordered, positives, side="left")
    not_above = np.searchsorted(ordered, positives, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(positives) * len(negatives)))


def _scores(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(
            f"ROC figures need at least one finite score for the {what}, got {values.size} values"
        )
    return values
