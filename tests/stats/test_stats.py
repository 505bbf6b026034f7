"""The statistics in runs/analysis/stats.py against printed tables, hand computation and enumeration."""

from __future__ import annotations

import itertools
import math

import pytest

from runs.analysis import stats


@pytest.mark.parametrize(
    ("probability", "df", "table_value"),
    # Two-sided critical values from any printed t table.
    [(0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 30, 2.042), (0.995, 5, 4.032),
     (0.95, 20, 1.725)],
)
def test_t_quantiles_match_the_printed_table(probability: float, df: int, table_value: float) -> None:
    assert stats.t_quantile(probability, df) == pytest.approx(table_value, abs=5e-4)


def test_welch_matches_the_hand_computation() -> None:
    # a: mean 2.5, s² = 5/3; b: mean 6, s² = 10.  s²a/na = 5/12, s²b/nb = 2.
    # t = -3.5 / sqrt(29/12) = -2.25144;  df = (29/12)² / ((5/12)²/3 + 2²/4) = 5.52079.
    result = stats.welch_t_test([1, 2, 3, 4], [2, 4, 6, 8, 10])
    assert result is not None
    assert result.difference == pytest.approx(-3.5)
    assert result.t == pytest.approx(-3.5 / math.sqrt(29 / 12), rel=1e-12)
    assert result.df == pytest.approx((29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 1), rel=1e-12)
    # Both tails beyond |t| = 2.2514 at 5.52 df: between the 0.10 (2.015 at 5 df) and 0.05 levels.
    assert result.p_value == pytest.approx(0.0691, abs=5e-4)
    # The interval is the difference ± t(0.975, df) × standard error.
    assert result.df is not None
    half = stats.t_quantile(0.975, result.df) * math.sqrt(29 / 12)
    assert (result.ci_low, result.ci_high) == pytest.approx((-3.5 - half, -3.5 + half))


def test_welch_refuses_what_it_cannot_compute() -> None:
    assert stats.welch_t_test([1.0], [1.0, 2.0]) is None
    flat = stats.welch_t_test([1.0, 1.0], [2.0, 2.0])
    assert flat is not None and flat.t is None and flat.p_value is None and "zero variance" in flat.note


def _enumerated_p(a: list[float], b: list[float]) -> float:
    """Twice the smaller one-sided share of splits at least as extreme (SciPy's two-sided definition)."""
    pooled, observed = a + b, sum(a) / len(a) - sum(b) / len(b)
    below = above = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(a)):
        first = [pooled[i] for i in chosen]
        second = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        difference = sum(first) / len(first) - sum(second) / len(second)
        total += 1
        below += difference <= observed + 1e-12
        above += difference >= observed - 1e-12
    return min(1.0, 2 * min(below, above) / total)


@pytest.mark.parametrize(("a", "b"), [([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), ([0.3, -0.1, 0.2, 0.5], [0.0, 0.1, -0.4])])
def test_permutation_p_is_exact_at_small_n(a: list[float], b: list[float]) -> None:
    assert stats.permutation_p_value(a, b) == pytest.approx(_enumerated_p(a, b))
    # 3 against 3: 20 splits, the two extreme ones are as far apart as the data: p = 0.1, never below.
    assert stats.permutation_p_value([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert stats.permutation_p_value([1.0], [2.0, 3.0]) is None


def test_holm_adjustment() -> None:
    # Sorted 0.01, 0.03, 0.04 of a family of 3: 3 × 0.01, max(0.03, 2 × 0.03), max(0.06, 1 × 0.04).
    assert stats.holm_adjust([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert stats.holm_adjust([0.6, 0.9]) == [1.0, 1.0]


def test_hedges_g_and_its_interval() -> None:
    effect = stats.hedges_g([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert effect is not None
    # Pooled sd 1, difference −3, correction 1 − 3 / (4 × 6 − 9) = 0.8.
    assert effect.hedges_g == pytest.approx(-2.4)
    se = math.sqrt(6 / 9 + 2.4**2 / 12)
    assert (effect.ci_low, effect.ci_high) == pytest.approx((-2.4 - 1.959964 * se, -2.4 + 1.959964 * se), abs=1e-5)
    assert stats.hedges_g([1.0, 1.0], [2.0, 2.0]) is None


def test_summary_and_t_interval() -> None:
    summary = stats.summarize([1.0, 2.0, 3.0])
    assert summary.mean == pytest.approx(2.0)
    assert summary.sd == pytest.approx(1.0)
    assert summary.ci_high == pytest.approx(2.0 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert stats.summarize([5.0]).sd is None
    assert stats.summarize([]).mean is None


def test_running_best_skips_crashes() -> None:
    assert stats.running_best([None, 3.0, None, 2.5, 2.7, 1.0]) == [None, 3.0, 3.0, 2.5, 2.5, 1.0]
