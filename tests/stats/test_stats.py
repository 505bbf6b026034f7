"""The statistics in runs/stats.py against closed forms, printed tables and hand computation."""

from __future__ import annotations

import math

import pytest

from runs import stats


@pytest.mark.parametrize("t", [-7.5, -1.0, -0.2, 0.0, 0.3, 1.0, 2.5, 40.0])
def test_t_cdf_matches_closed_forms_for_one_and_two_df(t: float) -> None:
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert stats.student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert stats.student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize(
    ("probability", "df", "table_value"),
    # Two-sided critical values from any printed t table.
    [(0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 30, 2.042), (0.995, 5, 4.032),
     (0.95, 20, 1.725)],
)
def test_t_quantiles_match_the_printed_table(probability: float, df: int, table_value: float) -> None:
    assert stats.student_t_quantile(probability, df) == pytest.approx(table_value, abs=5e-4)
    assert stats.student_t_cdf(table_value, df) == pytest.approx(probability, abs=2e-4)


def _t_density(x: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


@pytest.mark.parametrize(("t", "df"), [(2.251437, 5.520790), (0.7, 3.3), (3.1, 17.25)])
def test_two_sided_p_matches_numerical_integration_of_the_density(t: float, df: float) -> None:
    # An independent route: Simpson's rule on the density over [0, |t|].
    steps = 20_000
    h = t / steps
    total = _t_density(0, df) + _t_density(t, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, steps))
    central = 2 * total * h / 3
    assert stats.student_t_two_sided_p(t, df) == pytest.approx(1 - central, abs=1e-9)


def test_welch_matches_the_hand_computation() -> None:
    # a: mean 2.5, s² = 5/3; b: mean 6, s² = 10.  s²a/na = 5/12, s²b/nb = 2.
    # t = -3.5 / sqrt(29/12) = -2.25144;  df = (29/12)² / ((5/12)²/3 + 2²/4) = 5.52079.
    result = stats.welch_t_test([1, 2, 3, 4], [2, 4, 6, 8, 10])
    assert result is not None
    assert result.difference == pytest.approx(-3.5)
    assert result.t == pytest.approx(-3.5 / math.sqrt(29 / 12), rel=1e-12)
    expected_df = (29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 1)
    assert result.df == pytest.approx(expected_df, rel=1e-12)
    assert result.df == pytest.approx(5.52079, abs=1e-5)
    # Both tails beyond |t| = 2.2514 at 5.52 df: between the 0.10 (2.015 at 5 df) and 0.05 levels.
    assert result.p_value == pytest.approx(0.0694, abs=5e-4)


def test_welch_equal_variances_equal_sizes_is_students_test() -> None:
    # With equal n and equal s², Welch's df is 2n - 2 and t is Student's pooled t.
    result = stats.welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert result is not None
    assert result.t == pytest.approx(-3 / math.sqrt(2 / 3))
    assert result.df == pytest.approx(4.0)
    assert result.p_value == pytest.approx(2 * (1 - stats.student_t_cdf(3 / math.sqrt(2 / 3), 4)))


def test_welch_refuses_what_it_cannot_compute() -> None:
    assert stats.welch_t_test([1.0], [1.0, 2.0]) is None
    flat = stats.welch_t_test([1.0, 1.0], [2.0, 2.0])
    assert flat is not None and flat.t is None and flat.p_value is None and "zero variance" in flat.note


def test_bootstrap_is_deterministic_with_a_seed_and_covers_a_clear_difference() -> None:
    # Sample means differ by exactly 3 (the true difference of the two constructions).
    spread = [-1.2, -0.7, -0.3, 0.0, 0.2, 0.5, 0.6, 0.9]
    a = [3.0 + s for s in spread]
    b = [-s / 2 for s in spread]
    first = stats.bootstrap_difference_ci(a, b, seed=123)
    second = stats.bootstrap_difference_ci(a, b, seed=123)
    other = stats.bootstrap_difference_ci(a, b, seed=124)
    assert first == second
    assert other is not None and first is not None and other.ci_low != first.ci_low
    assert first.ci_low < 3.0 < first.ci_high
    assert first.ci_low > 0  # clearly separated groups: the interval excludes 0
    assert first.resamples == 10_000


def test_summary_and_t_interval() -> None:
    summary = stats.summarize([1.0, 2.0, 3.0])
    assert summary.mean == pytest.approx(2.0)
    assert summary.sd == pytest.approx(1.0)
    assert summary.ci_high == pytest.approx(2.0 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert stats.summarize([5.0]).sd is None
    assert stats.summarize([]).mean is None


def test_running_best_skips_crashes() -> None:
    assert stats.running_best([None, 3.0, None, 2.5, 2.7, 1.0]) == [None, 3.0, 3.0, 2.5, 2.5, 1.0]
