"""Means and 95% intervals: the one place an interval is computed.

Every interval is Student's t with n − 1 degrees of freedom. Over hundreds of tasks that is the
normal 1.96 to three decimals; over a handful of seeds it is not (t₀.₉₇₅ = 4.30 at n = 3), and
1.96 there would claim more certainty than three runs hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
    """Two-sided Student-t critical value: P(|T_df| ≤ q) = level."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(_scipy_stats.t.ppf(0.5 + level / 2.0, df))


@dataclass(frozen=True)
class Interval:
    """mean ± half_width over n values; ``over`` names what they are (tasks, seeds, pairs)."""

    mean: float
    half_width: float
    n: int
    over: str

    def describe(self, scale: float = 100.0, unit: str = "%") -> str:
        if math.isnan(self.half_width):
            return f"{self.mean * scale:.2f}{unit} (one value: no interval)"
        return (f"{self.mean * scale:.2f}{unit} ± {self.half_width * scale:.2f}{unit} "
                f"(95% t-interval over {self.n} {self.over})")


def mean_interval(values: Sequence[float], over: str) -> Interval:
    """Mean and the half-width t·sd/√n of its 95% interval; NaN half-width for a single value."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, float("nan"), n, over)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return Interval(mean, t_quantile(n - 1) * math.sqrt(var / n), n, over)


def paired_difference(a: Sequence[float], b: Sequence[float], over: str) -> Interval:
    """Mean of a_i − b_i with its t-interval: the comparison of two methods run on the same
    seeds and tasks, where the shared noise cancels in each difference."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b)], over)


def slope_interval(xs: Sequence[float], ys: Sequence[float], over: str) -> Interval:
    """Least-squares slope of ys on xs with its t-interval (n − 2 degrees of freedom, from the
    residuals): how fast a curve still moves, judged against its own scatter around the line.
    NaN half-width with fewer than 3 points or none off the line."""
    if len(xs) != len(ys):
        raise ValueError(f"slope needs equal lengths, got {len(xs)} and {len(ys)}")
    n = len(xs)
    if n < 2:
        raise ValueError(f"slope needs at least 2 points, got {n}")
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("slope needs at least 2 distinct x values")
    slope = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if n < 3:
        return Interval(slope, float("nan"), n, over)
    rss = math.fsum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return Interval(slope, t_quantile(n - 2) * math.sqrt(rss / (n - 2) / sxx), n, over)
