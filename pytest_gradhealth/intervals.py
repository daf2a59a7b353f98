"""Confidence intervals for the median of per-seed figures, and how many seeds would settle a verdict.

Pure Python and numpy, no torch: reports loaded from JSON use it too.

The interval is the distribution-free order-statistic interval for the median: for N values sorted, the interval
[x_(j), x_(N+1-j)] covers the true median with probability 1 - 2 P(B < j), B ~ Binomial(N, 1/2), whatever the
distribution of the values. It assumes only independent draws, which N seeds are, and is exact for small N, where a
t interval would lean on a normality that per-seed log ratios do not have. The largest j whose coverage reaches
`level` is taken; with too few seeds for `level` (N < 6 at 95%: [min, max] covers only 1 - 2^(1-N)) the interval is
[min, max] and `coverage` says how much less than `level` it holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_gradhealth.errors import InvalidArgumentError


@dataclass(frozen=True)
class Interval:
    """A confidence interval for the median of `n` per-seed values: [low, high] with the given coverage."""

    low: float
    high: float
    median: float
    n: int
    level: float  # the coverage asked for
    coverage: float  # the coverage the order statistics give: >= level unless n is too small for it

    def straddles(self, bound: float) -> bool:
        """True when `bound` lies strictly inside the interval: the data cannot tell which side the median is on."""
        return self.low < bound < self.high

    def seeds_to_settle(self, bound: float) -> int:
        """Roughly how many seeds in all would put the interval on one side of `bound`: its half-width shrinks as
        1/sqrt(N), so N * (half-width / distance of the median from the bound)^2, at least n + 1."""
        half_width = (self.high - self.low) / 2
        distance = abs(self.median - bound)
        if distance == 0.0 or not math.isfinite(half_width):
            return max(self.n * 4, self.n + 1)  # the median sits on the bound: no finite count follows from the data
        return max(self.n + 1, math.ceil(self.n * (half_width / distance) ** 2))


def median_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """The order-statistic confidence interval for the median of `values` (NaN values are dropped)."""
    if not (isinstance(level, (int, float)) and not isinstance(level, bool) and 0.0 < level < 1.0):
        raise InvalidArgumentError(f"level must be a number strictly between 0 and 1, such as 0.95, got {level!r}")
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, float(level), 0.0)
    # P(B < j) for B ~ Binomial(n, 1/2), j = 1 .. n//2: the coverage of [x_(j), x_(n+1-j)] is 1 - 2 P(B < j)
    below = np.cumsum([math.comb(n, i) for i in range(n // 2 + 1)]) / 2.0**n
    j, coverage = 1, 1.0 - 2.0 * below[0] if n > 1 else 0.0
    for k in range(2, n // 2 + 1):
        if 1.0 - 2.0 * below[k - 1] < level:
            break
        j, coverage = k, 1.0 - 2.0 * below[k - 1]
    return Interval(float(x[j - 1]), float(x[n - j]), float(np.median(x)), n, float(level), float(coverage))


def separation_chance(n: int, m: int) -> float:
    """The chance, when two sets of n and m draws come from one distribution, that every value of the one lies
    below every value of the other: 1 / C(n + m, n), whatever the distribution (every order is equally likely)."""
    return 1.0 / math.comb(n + m, n)


def significantly_worse(
    old: Sequence[float], new: Sequence[float], worse: str, min_effect: float, alpha: float
) -> bool:
    """True when the per-seed values `new` are worse than `old` beyond what the seed spread explains and by more
    than `min_effect`: every new value lies beyond every old one in the `worse` direction ("lower" or "higher"),
    an ordering that one distribution gives with chance `separation_chance(n, m)` <= `alpha`, and the medians
    differ by more than `min_effect`. NaN values never count as a regression (the plain rules judge those)."""
    a, b = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if np.isnan(a).any() or np.isnan(b).any() or separation_chance(len(a), len(b)) > alpha:
        return False
    if worse == "higher":
        a, b = -a, -b
    return bool(b.max() < a.min() and np.median(a) - np.median(b) > min_effect)
