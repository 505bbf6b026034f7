"""Power and headroom of a comparison: what its n and spread could have detected, and how far groups got.

An unhighlighted pair says little unless one knows how large a difference the test could have
seen. For a pair of groups with n₁, n₂ runs and pooled sample sd s, the two-sided two-sample
t-test at level α has power

    power(δ) = P(T' > t*) + P(T' < −t*),   T' ~ noncentral t(df = n₁ + n₂ − 2, λ = δ / (s·√(1/n₁ + 1/n₂))),

where t* is the t(df) quantile at 1 − α/2. The smallest detectable difference at 80% power is the
δ solving power(δ) = 0.8 (solved for λ with Brent's method); the n needed for a difference δ is the
smallest equal n per group whose power reaches 0.8. The permutation test that highlights pairs by
default has about the same power as the t-test at these sizes; the t-test's is the one with a formula.

Headroom: per group, how many runs end on exactly the same best value (a sign of a floor or of a
small discrete landscape), and how far the group got towards the best value known on the objective.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

ALPHA = 0.05
TARGET_POWER = 0.80
MAX_N = 100_000
# Values equal to this many decimals count as a tie (float noise below it is not a different result).
TIE_DECIMALS = 9
# The paper's C − A in Δ (best − baseline, val_bpb) from its published repeats in the repository
# (mechanisms/fixtures/paper_runs/: C1 1.047687 − 1.113135 = −0.065448; A1 1.096392 − 1.104926 = −0.008534).
PAPER_C_MINUS_A = -0.056914


def pooled_sd(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The pooled sample sd of two groups (ddof 1 each); None when a group has fewer than 2 values."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    return math.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2))


def _power_at(noncentrality: float, df: float, critical: float) -> float:
    return float(scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality))


def power(difference: float, sd: float, n1: float, n2: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided two-sample t-test to detect a true difference of means ``difference``."""
    df = n1 + n2 - 2
    critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    return _power_at(abs(difference) / (sd * math.sqrt(1 / n1 + 1 / n2)), df, critical)


def detectable_difference(
    sd: float | None, n1: int, n2: int, target: float = TARGET_POWER, alpha: float = ALPHA
) -> float | None:
    """The smallest true difference of means detected with probability ``target``; None without a spread."""
    if sd is None or not math.isfinite(sd) or sd <= 0 or n1 < 2 or n2 < 2:
        return None
    df = n1 + n2 - 2
    critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    upper = 1.0
    while _power_at(upper, df, critical) < target:
        upper *= 2
    noncentrality = optimize.brentq(lambda lam: _power_at(lam, df, critical) - target, 0.0, upper, xtol=1e-10)
    return noncentrality * sd * math.sqrt(1 / n1 + 1 / n2)


def n_needed(
    difference: float, sd: float | None, target: float = TARGET_POWER, alpha: float = ALPHA, max_n: int = MAX_N
) -> int | None:
    """The smallest equal number of runs per group that detects ``difference`` with probability ``target``.

    None without a spread, for a zero difference, or when even ``max_n`` runs per group would not do.
    """
    if sd is None or not math.isfinite(sd) or sd <= 0 or difference == 0:
        return None
    if power(difference, sd, 2, 2, alpha) >= target:
        return 2
    # Bracket by doubling (far beyond the root the noncentral t's tail evaluates to NaN).
    lower, upper = 2.0, 4.0
    while power(difference, sd, upper, upper, alpha) < target:
        if upper >= max_n:
            return None
        lower, upper = upper, min(2 * upper, float(max_n))
    root = optimize.brentq(lambda n: power(difference, sd, n, n, alpha) - target, lower, upper, xtol=1e-6)
    n = math.ceil(root - 1e-6)
    # Power grows with n; step over any rounding at the root so the answer really reaches the target.
    while power(difference, sd, n, n, alpha) < target:
        n += 1
    return n


@dataclass(frozen=True)
class PairPower:
    sd: float | None  # pooled sample sd of the pair's Δ values
    detectable: float | None  # smallest |difference| detected with 80% power at these n
    reference_difference: float  # the paper's C − A
    n_for_reference: int | None  # runs per group needed to detect it with 80% power at this spread
    power_at_reference: float | None  # this pair's power to detect the paper's C − A

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_power(a: Sequence[float], b: Sequence[float], reference: float = PAPER_C_MINUS_A) -> PairPower:
    sd = pooled_sd(a, b)
    usable = sd is not None and sd > 0
    return PairPower(
        sd=sd,
        detectable=detectable_difference(sd, len(a), len(b)),
        reference_difference=reference,
        n_for_reference=n_needed(reference, sd),
        power_at_reference=power(reference, sd, len(a), len(b)) if usable and sd is not None else None,
    )


@dataclass(frozen=True)
class Ties:
    runs_tied: int  # runs whose best equals another run's best in the group
    largest: int  # size of the largest set of runs sharing one best value (1 = no tie)
    value: float | None  # that shared value, when largest ≥ 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ties(best_values: Sequence[float]) -> Ties:
    counts = Counter(round(v, TIE_DECIMALS) for v in best_values)
    if not counts:
        return Ties(0, 0, None)
    value, largest = counts.most_common(1)[0]
    tied = sum(c for c in counts.values() if c >= 2)
    return Ties(tied, largest, value if largest >= 2 else None)


@dataclass(frozen=True)
class Headroom:
    best_known: float | None
    group_best: float | None  # the lowest best of the group's runs
    mean_best: float | None
    gap: float | None  # mean best − best known (≥ 0 unless the group found a new best)
    share: float | None  # (mean baseline − mean best) / (mean baseline − best known): fraction of the way

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def headroom(baselines: Sequence[float], bests: Sequence[float], best_known: float | None) -> Headroom:
    if not bests:
        return Headroom(best_known, None, None, None, None)
    mean_best = sum(bests) / len(bests)
    gap = mean_best - best_known if best_known is not None else None
    share = None
    if best_known is not None and baselines:
        room = sum(baselines) / len(baselines) - best_known
        if room > 0:
            share = (sum(baselines) / len(baselines) - mean_best) / room
    return Headroom(best_known, min(bests), mean_best, gap, share)
