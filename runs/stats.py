"""Small, honest statistics for comparing groups of runs (no scipy: the t distribution is computed here).

- Student t CDF through the regularized incomplete beta function, evaluated with the continued
  fraction of Numerical Recipes (modified Lentz), accurate to ~1e-12 for the df we meet.
- Welch's unequal-variance t-test with the Welch–Satterthwaite df, two-sided p-value.
- A seeded percentile bootstrap of a difference of means (each group resampled on its own).
- t quantiles (for 95% CI bands) by bisection on the CDF.

Every function returns None (or NaN-free dicts with None) when the data cannot support the
number, rather than inventing one: n < 2, zero variance in both groups, and so on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_EPS = 3e-16
_TINY = 1e-300
_MAX_ITER = 500


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (Numerical Recipes `betacf`, modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = _TINY if abs(d) < _TINY else d
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError("a and b must be positive")
    if not 0.0 <= x <= 1.0:
        raise ValueError("x must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, need not be an integer) degrees of freedom."""
    if df <= 0:
        raise ValueError("df must be positive")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_quantile(probability: float, df: float) -> float:
    """The t with P(T <= t) = probability, by bisection (monotone CDF; 200 halvings is plenty)."""
    if not 0.0 < probability < 1.0:
        raise ValueError("probability must be in (0, 1)")
    if probability == 0.5:
        return 0.0
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > probability:
        low *= 2.0
    while student_t_cdf(high, df) < probability:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, abs(middle)):
            break
    return (low + high) / 2.0


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
    half = student_t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float | None
    df: float | None
    p_value: float | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's t-test of mean(a) = mean(b); None when a group has fewer than 2 values."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    difference = float(x.mean() - y.mean())
    vx, vy = float(x.var(ddof=1)) / x.size, float(y.var(ddof=1)) / y.size
    se2 = vx + vy
    if se2 == 0.0:
        return WelchResult(difference, None, None, None, "both groups have zero variance: no test possible")
    t = difference / math.sqrt(se2)
    df = se2 * se2 / ((vx * vx) / (x.size - 1) + (vy * vy) / (y.size - 1))
    return WelchResult(difference, t, df, student_t_two_sided_p(t, df))


@dataclass(frozen=True)
class BootstrapResult:
    difference: float
    ci_low: float
    ci_high: float
    resamples: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_difference_ci(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> BootstrapResult | None:
    """Percentile bootstrap CI of mean(a) - mean(b), resampling each group with replacement.

    With n = 3 per group the bootstrap distribution is coarse (only 10 distinct means per
    group) and the interval is too narrow; it is shown next to Welch's test, not instead of it.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means_x = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    means_y = y[rng.integers(0, y.size, size=(resamples, y.size))].mean(axis=1)
    diffs = means_x - means_y
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return BootstrapResult(float(x.mean() - y.mean()), float(low), float(high), resamples, seed)


def running_best(values: Sequence[float | None]) -> list[float | None]:
    """Cumulative minimum, skipping None (crashes); None until the first value."""
    best: float | None = None
    out: list[float | None] = []
    for value in values:
        if value is not None and (best is None or value < best):
            best = value
        out.append(best)
    return out
