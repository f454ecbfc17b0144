"""Greedy CTC decoding against a plain-Python reference, and on hand-made frame sequences."""

import pytest
import torch

from s2s.recognizer.decode import greedy_ctc_decode


def _reference(best: list[int], blank: int = 0) -> list[int]:
    out, previous = [], None
    for token in best:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


def _one_hot(paths: list[list[int]], classes: int) -> torch.Tensor:
    length = max(len(p) for p in paths)
    logits = torch.full((len(paths), length, classes), -5.0)
    for row, path in enumerate(paths):
        for t, token in enumerate(path):
            logits[row, t, token] = 5.0
    return logits


def test_constructed_paths_collapse_repeats_and_drop_blanks():
    paths = [
        [0, 3, 3, 0, 0, 5, 5, 5, 0],  # "3 5"
        [4, 0, 4, 4, 0, 4, 0, 0, 0],  # a repeated word needs a blank between: "4 4 4"
        [0, 0, 0, 0, 0, 0, 0, 0, 0],  # silence: nothing
        [2, 2, 7, 7, 2, 0, 0, 0, 0],  # no blank between different words: "2 7 2"
    ]
    assert greedy_ctc_decode(_one_hot(paths, 10)) == [[3, 5], [4, 4, 4], [], [2, 7, 2]]


def test_frames_beyond_a_rows_length_never_add_words():
    logits = _one_hot([[0, 3, 0, 6, 6, 6], [5, 0, 0, 0, 0, 0]], 8)
    assert greedy_ctc_decode(logits, torch.tensor([3, 6])) == [[3], [5]]
    assert greedy_ctc_decode(logits, torch.tensor([0, 1])) == [[], [5]]


def test_random_logits_match_the_reference(generator):
    seed = generator.initial_seed()
    logits = torch.randn(16, 40, 6, generator=generator) * 3
    lengths = torch.randint(0, 41, (16,), generator=generator)
    decoded = greedy_ctc_decode(logits.log_softmax(-1), lengths)
    for row in range(16):
        best = logits[row, : lengths[row]].argmax(-1).tolist()
        assert decoded[row] == _reference(best), f"seed {seed}, row {row}"


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="batch, frames, classes"):
        greedy_ctc_decode(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="lengths"):
        greedy_ctc_decode(torch.zeros(2, 5, 3), torch.tensor([6, 1]))
