"""The pause-versus-turn-end scores of a validation epoch: onsets found from the user-state targets,
the scores read over their windows (against a float64 computation written out here), and the areas
under the ROC curve against a pairwise count."""

import numpy as np
import torch

from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS
from s2s.training.turn_end_separability import OnsetWindows, onset_scores, silence_onsets

S, P, E, Q = UserState.SPEAKING, UserState.PAUSE, UserState.ENDED, UserState.SILENT


def _states(*runs: tuple[UserState, int]) -> torch.Tensor:
    return torch.tensor([int(state) for state, count in runs for _ in range(count)])


def test_onsets_are_speaking_to_pause_or_ended_with_room_for_the_window():
    rows = torch.stack(
        [
            _states((Q, 3), (S, 5), (P, 8), (S, 4), (E, 10)),
            _states((S, 4), (E, 3), (S, 3), (Q, 10), (S, 3), (P, 7)),
        ]
    )
    lengths = torch.tensor([30, 28])
    onsets = silence_onsets(rows, lengths, last=7)
    # Row 1: the ENDED run is 3 frames (< 7: skipped), SPEAKING -> SILENT is no onset, the last PAUSE
    # is cut by the row's length (28: 5 of 7 frames).
    assert onsets == [(0, 8, 0), (0, 20, 1)]


def test_scores_and_aucs_match_a_float64_computation():
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    generator = torch.Generator().manual_seed(seed)
    row = _states((S, 6), (P, 9), (S, 6), (E, 12), (S, 5), (P, 8), (S, 4), (E, 10))
    states = torch.stack([row, row.roll(3)])
    lengths = torch.tensor([60, 60])
    state_logits = torch.randn(2, 60, 4, generator=generator)
    token_logits = torch.randn(2, 60, 13, generator=generator)
    windows = OnsetWindows(state_window=(0, 4), bos_window=(2, 7))
    scores = onset_scores(state_logits, token_logits, states, lengths, BOS, windows)

    onsets = silence_onsets(states, lengths, last=7)
    assert len(onsets) == len(scores.labels) == 8, f"seed {seed}: {onsets}"
    for number, (r, f, label) in enumerate(onsets):
        logp = state_logits[r].double().log_softmax(-1)
        want_state = (logp[f : f + 4, int(E)] - logp[f : f + 4, int(P)]).mean().item()
        want_bos = token_logits[r].double().log_softmax(-1)[f + 2 : f + 7, BOS].mean().item()
        assert abs(scores.state[number] - want_state) < 1e-5, f"seed {seed}, onset {number}"
        assert abs(scores.bos[number] - want_bos) < 1e-5, f"seed {seed}, onset {number}"
        assert scores.labels[number] == label

    labels = np.array(scores.labels)
    for name, values in (("state_auc", scores.state), ("bos_auc", scores.bos)):
        values = np.array(values)
        pos, neg = values[labels == 1], values[labels == 0]
        pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
        assert abs(scores.aucs()[name] - float(np.mean(pairs))) < 1e-12, f"seed {seed}: {name}"


def test_a_model_that_knows_scores_one_and_no_pause_gives_no_area():
    row = _states((S, 5), (P, 8), (S, 5), (E, 10))
    states = row[None]
    logits = torch.zeros(1, 28, 4)
    logits[0, 5:13, int(P)] = 5.0  # sure of the pause
    logits[0, 18:28, int(E)] = 5.0  # sure of the end
    tokens = torch.zeros(1, 28, 13)
    tokens[0, 18:28, BOS] = 3.0
    scores = onset_scores(logits, tokens, states, torch.tensor([28]), BOS)
    assert scores.aucs() == {"state_auc": 1.0, "bos_auc": 1.0}
    only_ends = onset_scores(logits[:, 13:], tokens[:, 13:], states[:, 13:], torch.tensor([15]), BOS)
    assert only_ends.labels == [1] and only_ends.aucs() == {}
