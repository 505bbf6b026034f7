"""Small, honest statistics for comparing groups of runs, computed with SciPy.

- t intervals for a group's mean.
- Two tests of "the two groups' mean Δ differ", for small n: Welch's unequal-variance t-test and
  a two-sample permutation test of the difference of means (exact, every relabelling enumerated,
  up to 7 runs per group; a fixed-seed sample of 4,999 relabellings beyond): no distributional
  assumption, valid at n = 3. Which one decides the highlight is a choice.
- The effect: the difference of means with Welch's 95% interval, and Hedges' g (the standardised
  difference, small-sample corrected) with its approximate 95% interval.
- Holm's step-down adjustment across all the pairs of a comparison (family-wise error 5%).

Every function returns None (or None fields) when the data cannot support the number, rather
than inventing one: n < 2, zero variance in both groups, and so on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
TESTS = ("permutation", "welch")
EXACT_SPLITS = 5_000
SAMPLED_SPLITS = 4_999
PERMUTATION_SEED = 20260323


def t_quantile(probability: float, df: float) -> float:
    return float(scipy_stats.t.ppf(probability, df))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    sd: float | None  # sample sd (ddof=1); None when n < 2
    ci_low: float | None  # 95% t interval for the mean; None when n < 2
    ci_high: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    data = np.asarray(values, dtype=float)
    n = int(data.size)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = float(data.mean())
    if n < 2:
        return Summary(n, mean, None, None, None)
    sd = float(data.std(ddof=1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float | None
    df: float | None
    p_value: float | None
    ci_low: float | None  # Welch 95% interval of the difference
    ci_high: float | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's t-test of mean(a) = mean(b); None when a group has fewer than 2 values."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    difference = float(x.mean() - y.mean())
    if x.var(ddof=1) == 0.0 and y.var(ddof=1) == 0.0:
        return WelchResult(difference, None, None, None, None, None, "both groups have zero variance: no test possible")
    result = scipy_stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(LEVEL)
    return WelchResult(
        difference, float(result.statistic), float(result.df), float(result.pvalue),
        float(interval.low), float(interval.high),
    )


def permutation_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided permutation test of mean(a) = mean(b) over the splits of the pooled values."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None

    def difference(first: np.ndarray, second: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(first, axis=axis) - np.mean(second, axis=axis)

    # Exact up to EXACT_SPLITS relabellings (n = 7 per group: 3,432); beyond, a fixed-seed random sample of
    # them, which keeps the comparison page fast (exact at 10 per group takes seconds) and the p-value valid.
    splits = math.comb(x.size + y.size, x.size)
    result = scipy_stats.permutation_test(
        (x, y), difference, permutation_type="independent", vectorized=True,
        n_resamples=np.inf if splits <= EXACT_SPLITS else SAMPLED_SPLITS, alternative="two-sided",
        rng=np.random.default_rng(PERMUTATION_SEED),
    )
    return float(min(1.0, result.pvalue))


@dataclass(frozen=True)
class EffectSize:
    hedges_g: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> EffectSize | None:
    """Standardised difference of means with the small-sample correction; normal-approximation 95% interval."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = x.size, y.size
    if n1 < 2 or n2 < 2:
        return None
    pooled = math.sqrt(((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2))
    if pooled == 0.0:
        return None
    correction = 1 - 3 / (4 * (n1 + n2) - 9)
    g = correction * float(x.mean() - y.mean()) / pooled
    se = math.sqrt((n1 + n2) / (n1 * n2) + g * g / (2 * (n1 + n2)))
    z = float(scipy_stats.norm.ppf(0.5 + LEVEL / 2))
    return EffectSize(g, g - z * se, g + z * se)


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count towards the family)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


def running_best(values: Sequence[float | None]) -> list[float | None]:
    """Cumulative minimum, skipping None (crashes); None until the first value."""
    best: float | None = None
    out: list[float | None] = []
    for value in values:
        if value is not None and (best is None or value < best):
            best = value
        out.append(best)
    return out
