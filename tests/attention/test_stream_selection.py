"""Stream selection for a batched session's reset: flags and indices told apart by type, everything
else refused with a message that says what to pass."""

import pytest
import torch

from s2s.attention.stream_selection import final_flags, stream_flags


def test_flags_and_indices_select_the_same_streams(generator):
    seed = int(torch.randint(2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    streams = int(torch.randint(1, 40, (1,), generator=g))
    flags = torch.rand(streams, generator=g) < 0.5
    indices = torch.nonzero(flags).flatten()
    expected = flags.tolist()
    as_lists = (flags.tolist(), indices.tolist(), tuple(indices.tolist()))
    for selection in (flags, indices, indices.int(), *as_lists):
        got = stream_flags(selection, streams)
        assert got.dtype == torch.bool and got.shape == (streams,), (seed, selection)
        assert got.tolist() == expected, (seed, selection)


def test_indices_are_not_read_as_flags():
    # the bug this guards: [0, 1] cast to bool is [False, True], which resets stream 1 only
    assert stream_flags(torch.tensor([0, 1]), 3).tolist() == [True, True, False]
    assert stream_flags([0, 1], 2).tolist() == [True, True]
    assert stream_flags(2, 3).tolist() == [False, False, True]
    assert stream_flags([], 2).tolist() == [False, False]
    assert stream_flags(torch.tensor([1, 1]), 2).tolist() == [False, True]


@pytest.mark.parametrize(
    ("selection", "error", "message"),
    [
        (torch.tensor([True, False]), ValueError, r"one bool per stream, shape \(3,\)"),
        (torch.ones(3, 1, dtype=torch.bool), ValueError, r"one bool per stream"),
        (torch.tensor([0.0, 1.0, 0.0]), TypeError, r"bool flags \(3,\) or integer indices"),
        (torch.tensor([[0, 1]]), TypeError, r"integer indices"),
        (torch.tensor([0, 3]), ValueError, r"indices \[3\] are outside the session's 3 streams"),
        ([-1], ValueError, r"indices \[-1\] are outside"),
        ([True, 1], TypeError, r"all bools \(flags\) or all ints \(indices\)"),
        (True, TypeError, r"a single bool does not say which streams"),
        ("0", TypeError, r"bool flags or integer indices, got str"),
        ([0.5], TypeError, r"all bools \(flags\) or all ints"),
    ],
)
def test_anything_else_is_refused(selection, error, message):
    with pytest.raises(error, match=message):
        stream_flags(selection, 3)


def test_final_takes_a_list_of_bools_as_flags_not_as_one_truth_value():
    """`bool([False, False, True])` is True: a list of flags must not end every stream."""
    assert final_flags([False, False, True], 3).tolist() == [False, False, True]
    assert final_flags((True, False, False), 3).tolist() == [True, False, False]
    assert final_flags(False, 3).tolist() == [False] * 3


@pytest.mark.parametrize("final", [[True, False], [0, 1, 0], [False, False, 1], 1, "yes", None])
def test_final_refuses_what_is_not_one_bool_or_a_flag_per_stream(final):
    with pytest.raises((ValueError, TypeError), match="final must be a bool"):
        final_flags(final, 3)
