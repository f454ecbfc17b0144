"""The two probes of pause-versus-end-of-turn separability, and how they are fitted and scored.

Why two: a small convolutional net over the feature window can find a cue anywhere in it (a rising
final syllable, a pitch contour); logistic regression on time-pooled features is the simple,
nearly parameter-free check that the net's figure is not an accident of its training. Both are
fitted on CPU in seconds to a minute, from a fixed seed; what they score is "this silence is a pause".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from s2s.data.turn_cue_probe import ProbeExamples
from s2s.streaming.detection import RocPoints, roc_auc

FALSE_ALARMS = (0.05, 0.10, 0.20)  # turn ends called pauses (late replies) a detection rate is read at
DETECTION = 0.95  # pauses detected (5% take-overs) a false-alarm rate is read at


@dataclass(frozen=True)
class ProbeTraining:
    """How a probe is fitted. The seed fixes initialization and batch order."""

    kind: str = "conv"  # "conv" or "logistic"
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-3
    channels: int = 48  # conv probe width
    dropout: float = 0.2
    slices: int = 5  # logistic probe: the window is averaged over this many equal stretches of time

    def __post_init__(self):
        if self.kind not in ("conv", "logistic"):
            raise ValueError(f"probe kind must be 'conv' or 'logistic', got {self.kind!r}")


class ConvProbe(torch.nn.Module):
    """(batch, frames, channels) standardized features -> one logit per window ("a pause")."""

    def __init__(self, in_channels: int, width: int, dropout: float):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv1d(in_channels, width, 5, padding=2), torch.nn.GELU(),
            torch.nn.Conv1d(width, width, 5, padding=4, dilation=2), torch.nn.GELU(),
            torch.nn.Conv1d(width, width, 5, padding=8, dilation=4), torch.nn.GELU(),
        )  # fmt: skip
        self.dropout = torch.nn.Dropout(dropout)
        # Mean over the window (what was said) and the last frames (how it ended) both matter.
        self.head = torch.nn.Linear(2 * width, 1)

    def forward(self, features: torch.Tensor, after_frames: int = 0) -> torch.Tensor:
        """`after_frames`: the window's last frames that lie past the onset (the "ending" is pooled at
        the onset, not at the window's end, which a wait fills with silence)."""
        hidden = self.body(features.transpose(1, 2))
        onset = hidden.shape[2] - after_frames
        pooled = torch.cat([hidden.mean(dim=2), hidden[:, :, onset - 5 : onset].mean(dim=2)], dim=1)
        return self.head(self.dropout(pooled)).squeeze(1)


Scorer = Callable[[torch.Tensor], np.ndarray]


def fit_probe(train: ProbeExamples, config: ProbeTraining) -> Scorer:
    """Fit the probe `config` names on `train`; returns features -> pause scores (higher: more a pause)."""
    labels = train.labels.float()
    if labels.min() == labels.max():
        raise ValueError(
            f"the probe needs pauses and turn ends to learn from, got {train.counts()}: use a split with "
            "pauses (a corpus made with timing.pause_probability > 0)"
        )
    torch.manual_seed(config.seed)
    if config.kind == "logistic":
        return _fit_logistic(_pooled(train.features, config.slices), labels, config)
    mean = train.features.mean(dim=(0, 1))
    std = train.features.std(dim=(0, 1)).clamp_min(1e-3)
    model = ConvProbe(train.features.shape[2], config.channels, config.dropout)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    positive_weight = (1 - labels).sum() / labels.sum()  # both classes weigh the same in the loss
    order = torch.Generator().manual_seed(config.seed)
    inputs = (train.features - mean) / std
    for _ in range(config.epochs):
        model.train()
        for batch in torch.randperm(len(labels), generator=order).split(config.batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(inputs[batch], train.after_frames), labels[batch], pos_weight=positive_weight
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()

    def score(features: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model((features - mean) / std, train.after_frames).double().numpy()

    return score


def _pooled(features: torch.Tensor, slices: int) -> torch.Tensor:
    """Each channel averaged over `slices` consecutive stretches of the window, flattened."""
    return torch.stack([part.mean(dim=1) for part in features.tensor_split(slices, dim=1)], dim=1).flatten(1)


def _fit_logistic(inputs: torch.Tensor, labels: torch.Tensor, config: ProbeTraining) -> Scorer:
    """L2-regularized logistic regression (both classes weighted equally), fitted to convergence by L-BFGS."""
    mean, std = inputs.mean(dim=0), inputs.std(dim=0).clamp_min(1e-3)
    x = ((inputs - mean) / std).double()
    y = labels.double()
    weights = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ w + b
        loss = (
            weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        ).mean()
        loss = loss + config.weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w, b = w.detach(), b.detach()

    def score(features: torch.Tensor) -> np.ndarray:
        return ((((_pooled(features, config.slices) - mean) / std).double() @ w) + b).numpy()

    return score


@dataclass(frozen=True)
class ProbeFigures:
    """How well scores separate pauses (positives) from turn ends, with 95% bootstrap intervals."""

    pauses: int
    turn_ends: int
    auc: float
    detection_at: dict[float, float]  # false-alarm rate on turn ends -> pause detection rate
    false_alarm_at_detection: float  # turn ends called pauses when DETECTION of pauses are detected
    intervals: dict[str, tuple[float, float]]

    def row(self) -> dict[str, float | int]:
        row: dict[str, float | int] = {"pauses": self.pauses, "turn_ends": self.turn_ends, "auc": self.auc}
        row |= {f"detect@fa{round(100 * fa)}": d for fa, d in self.detection_at.items()}
        return row | {f"fa@detect{round(100 * DETECTION)}": self.false_alarm_at_detection}


def probe_figures(
    scores: np.ndarray, labels: np.ndarray, seed: int = 0, resamples: int = 1000
) -> ProbeFigures:
    """The ROC figures of `scores` (label 1: pause) and percentile intervals from a stratified bootstrap."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    positives, negatives = scores[labels == 1], scores[labels == 0]

    def figures(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
        roc = RocPoints.of(pos, neg)
        values = {
            "auc": roc_auc(pos, neg),
            f"fa@detect{round(100 * DETECTION)}": roc.false_alarm_at(DETECTION),
        }
        return values | {f"detect@fa{round(100 * fa)}": roc.detection_at(fa) for fa in FALSE_ALARMS}

    point = figures(positives, negatives)
    rng = np.random.default_rng(seed)
    draws = [
        figures(rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives)))
        for _ in range(resamples)
    ]
    intervals = {
        key: (
            float(np.percentile([d[key] for d in draws], 2.5)),
            float(np.percentile([d[key] for d in draws], 97.5)),
        )
        for key in point
    }
    return ProbeFigures(
        pauses=len(positives),
        turn_ends=len(negatives),
        auc=point["auc"],
        detection_at={fa: point[f"detect@fa{round(100 * fa)}"] for fa in FALSE_ALARMS},
        false_alarm_at_detection=point[f"fa@detect{round(100 * DETECTION)}"],
        intervals=intervals,
    )


def confusable_shares(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per example, the share of the other class that the probe finds at least as much like this
    example's class's opposite: for a pause (label 1), the share of turn ends scoring >= it (turn ends
    that look more like a pause than this pause does); for a turn end, the share of pauses scoring
    <= it. 0 for an example the probe always ranks right; a pause with a high share is one a model
    would take over at almost any operating point. Needs both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pauses, ends = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    if len(pauses) == 0 or len(ends) == 0:
        raise ValueError(
            f"confusable shares need pauses and turn ends, got {len(pauses)} pauses and {len(ends)} turn ends"
        )
    ends_at_or_above = len(ends) - np.searchsorted(ends, scores, side="left")
    pauses_at_or_below = np.searchsorted(pauses, scores, side="right")
    return np.where(labels == 1, ends_at_or_above / len(ends), pauses_at_or_below / len(pauses))


def held_out_scores(train: ProbeExamples, test: ProbeExamples, config: ProbeTraining) -> np.ndarray:
    """Fit on `train`, score `test`."""
    return fit_probe(train, config)(test.features)


def cross_validated_scores(examples: ProbeExamples, config: ProbeTraining, folds: int = 5) -> np.ndarray:
    """Every example scored by a probe fitted on the other folds; folds are whole dialogues (seeded),
    so no dialogue's voice or words are on both sides."""
    names = sorted(set(examples.dialogues))
    if folds < 2 or folds > len(names):
        raise ValueError(f"cross-validation needs 2 <= folds <= dialogues ({len(names)}), got {folds}")
    order = np.random.default_rng(config.seed).permutation(len(names))
    fold_of = {names[i]: rank % folds for rank, i in enumerate(order)}
    assignment = np.array([fold_of[d] for d in examples.dialogues])
    scores = np.zeros(len(assignment))
    for fold in range(folds):
        held = assignment == fold
        scores[held] = held_out_scores(examples.subset(~held), examples.subset(held), config)
    return scores
