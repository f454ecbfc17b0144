"""95% intervals for the judged rates: how far the true rate may be from the one a split measured.

Why: the bars rest on few events. The synthetic test split holds 35 internal pauses, so one take-over
moves the rate by 0.029 and "4 of 35" (0.114) is consistent with a true rate from 0.045 to 0.26; a
reader comparing two runs, or a run against "<= 5%", needs that spread beside the point estimate.
The Wilson score interval (Wilson, 1927) keeps its coverage near the nominal level for small counts
and rates near 0 or 1, where the normal approximation fails (and it is never below 0 or above 1). A
closed form: scipy's `binomtest(...).proportion_ci(method="wilson")` gives the same, but scipy is not
on the GPU machine where stream_eval runs.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """(low, high) of the Wilson score interval of `successes` in `trials`; None without trials."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return None
    rate = successes / trials
    z2 = z * z
    centre = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 / 1 at the ends, where the
    high = 1.0 if successes == trials else min(1.0, centre + half)  # formula's rounding misses them
    return low, high
