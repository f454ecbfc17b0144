"""The Wilson interval against its definition: the rates p whose score test does not reject the
observed count, found by bisection in float64 (an independent computation of the same bounds)."""

import math

import numpy as np
import pytest

from s2s.streaming.intervals import Z95, wilson_interval


def _score_bounds(successes: int, trials: int) -> tuple[float, float]:
    """The p in [0, 1] with |successes / trials - p| <= z sqrt(p (1 - p) / trials), by bisection."""
    rate = successes / trials

    def inside(p: float) -> bool:
        return abs(rate - p) <= Z95 * math.sqrt(p * (1 - p) / trials)

    def edge(outside: float, inner: float) -> float:
        for _ in range(200):
            middle = (outside + inner) / 2
            outside, inner = (outside, middle) if inside(middle) else (middle, inner)
        return inner

    low = 0.0 if inside(0.0) or successes == 0 else edge(0.0, rate)
    high = 1.0 if inside(1.0) or successes == trials else edge(1.0, rate)
    return low, high


def test_wilson_interval_equals_the_score_test_inversion():
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    cases = [(0, 35), (1, 35), (4, 35), (35, 35), (7, 216), (0, 1), (1, 1)]
    cases += [(int(k), int(n)) for n in rng.integers(1, 500, 20) for k in rng.integers(0, n + 1, 1)]
    for successes, trials in cases:
        low, high = wilson_interval(successes, trials)
        want_low, want_high = _score_bounds(successes, trials)
        assert low == pytest.approx(want_low, abs=1e-9), f"seed {seed}: {successes} of {trials}"
        assert high == pytest.approx(want_high, abs=1e-9), f"seed {seed}: {successes} of {trials}"
        assert 0.0 <= low <= successes / trials <= high <= 1.0, f"seed {seed}: {successes} of {trials}"
    # the figure the module docstring quotes: 4 take-overs in 35 pauses
    low, high = wilson_interval(4, 35)
    assert (round(low, 3), round(high, 2)) == (0.045, 0.26)


def test_wilson_interval_refuses_impossible_counts():
    assert wilson_interval(0, 0) is None
    for successes, trials in ((3, 2), (-1, 4), (1, -1)):
        with pytest.raises(ValueError, match="successes <= trials"):
            wilson_interval(successes, trials)
