"""How well a trained model tells a pause inside a user turn from the end of the turn, at validation.

Why: the free-running validation counts take-overs in a handful of pauses (a few per pass), too few
to compare recipes; every teacher-forced validation batch holds all its pauses and turn ends. At each
silence onset of the user (a SPEAKING frame followed by a PAUSE or an ENDED frame in the user-state
targets) two scores are read from the teacher-forced pass, over a few frames after the onset:

- the user-state head's log-odds of ENDED against PAUSE (frames `state_window`, the encoder's view);
- the decoder's log-probability of BOS (frames `bos_window`: before the earliest reference reply,
  0.2 s = 5 frames after a turn end, is read back by the decoder), the decision the model samples.

The area under the ROC curve of each (turn ends positive) is 0.5 for a model that cannot tell them
apart and 1 for one that always can. `probe_turn_cue.py` measures what the input itself allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from s2s.data.token_targets import UserState
from s2s.models.token_sampling import turn_end_log_odds
from s2s.streaming.detection import roc_auc


@dataclass(frozen=True)
class OnsetWindows:
    """Frame offsets [first, end) after a silence onset that each score averages over."""

    state_window: tuple[int, int] = (0, 4)
    bos_window: tuple[int, int] = (2, 7)


@dataclass
class OnsetScores:
    """Scores gathered over a validation epoch; `labels` 1 = turn end, 0 = pause."""

    state: list[float] = field(default_factory=list)
    bos: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, other: OnsetScores) -> None:
        self.state += other.state
        self.bos += other.bos
        self.labels += other.labels

    def aucs(self) -> dict[str, float]:
        """{"state_auc", "bos_auc"}; empty when the epoch had no pause or no turn end."""
        labels = np.asarray(self.labels)
        if not (labels == 1).any() or not (labels == 0).any():
            return {}
        out = {}
        for name, values in (("state_auc", self.state), ("bos_auc", self.bos)):
            scores = np.asarray(values, dtype=np.float64)
            out[name] = roc_auc(scores[labels == 1], scores[labels == 0])
        return out


def silence_onsets(user_state: torch.Tensor, lengths: torch.Tensor, last: int) -> list[tuple[int, int, int]]:
    """(row, frame, label) of each frame where a SPEAKING frame gives way to PAUSE (0) or ENDED (1),
    with frames up to `frame + last` inside the row's length and the state unchanged through them."""
    state = user_state.cpu()
    onsets = []
    for row in range(state.shape[0]):
        s = state[row, : int(lengths[row])]
        starts = (s[:-1] == UserState.SPEAKING) & ((s[1:] == UserState.PAUSE) | (s[1:] == UserState.ENDED))
        for frame in (starts.nonzero().flatten() + 1).tolist():
            if frame + last > len(s) or bool((s[frame : frame + last] != s[frame]).any()):
                continue
            onsets.append((row, frame, int(s[frame] == UserState.ENDED)))
    return onsets


def onset_scores(
    user_state_logits: torch.Tensor,
    token_logits: torch.Tensor,
    user_state: torch.Tensor,
    lengths: torch.Tensor,
    bos_index: int,
    windows: OnsetWindows = OnsetWindows(),
) -> OnsetScores:
    """The two scores at every silence onset of a teacher-forced batch (logits (B, T, classes))."""
    last = max(windows.state_window[1], windows.bos_window[1])
    onsets = silence_onsets(user_state[:, : user_state_logits.shape[1]], lengths, last)
    scores = OnsetScores()
    if not onsets:
        return scores
    log_odds = turn_end_log_odds(user_state_logits).cpu()
    bos = token_logits.float().log_softmax(-1)[..., bos_index].cpu()
    for row, frame, label in onsets:
        a, b = windows.state_window
        scores.state.append(float(log_odds[row, frame + a : frame + b].mean()))
        a, b = windows.bos_window
        scores.bos.append(float(bos[row, frame + a : frame + b].mean()))
        scores.labels.append(label)
    return scores
