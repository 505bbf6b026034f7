"""Power and headroom figures against hand computations and published tables (pure functions, no database)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from runs.analysis import power

A = [-0.10, -0.12, -0.08, -0.11, -0.09]
B = [-0.05, -0.07, -0.04, -0.06, -0.08]
PAPER_RUNS = Path(__file__).resolve().parents[2] / "mechanisms" / "fixtures" / "paper_runs"


def test_pair_power_matches_the_hand_computation() -> None:
    """Fixture A = [−0.10, −0.12, −0.08, −0.11, −0.09], B = [−0.05, −0.07, −0.04, −0.06, −0.08].

    By hand: mean A = −0.10, deviations 0, −0.02, 0.02, −0.01, 0.01, sum of squares 0.0010, variance
    0.0010 / 4 = 0.00025; mean B = −0.06, deviations 0.01, −0.01, 0.02, 0, −0.02, the same 0.0010 and
    0.00025. Pooled sd s = √0.00025 = 0.0158114. n = 5 + 5: df = 8, the standard error of the difference
    s·√(1/5 + 1/5) = 0.0158114 · 0.632456 = 0.0100000; t*(0.975, 8) = 2.306004.
    Detectable at 80%: λ with P(T'(8, λ) > 2.306) + P(T'(8, λ) < −2.306) = 0.80 is 3.2009 (the normal
    approximation t* + z(0.80) = 2.306 + 0.8416 = 3.148 underestimates it a little, as it should at df 8),
    so δ = 3.2009 × 0.0100 = 0.03201 val_bpb.
    Paper C − A = (1.047687 − 1.113135) − (1.096392 − 1.104926) = −0.065448 + 0.008534 = −0.056914:
    d = 0.056914 / 0.0158114 = 3.5996 and λ = d·√(n/2). n = 2 per group: λ = 3.5996, df 2, t* 4.303:
    power < 0.8; n = 3: λ = 3.5996 · √(3/2) = 4.4086, df 4, t* 2.776: power > 0.8, so 3 runs per group.
    """
    result = power.pair_power(A, B)
    assert result.sd is not None and result.detectable is not None
    assert result.sd == pytest.approx(math.sqrt(0.00025), rel=1e-12)
    assert result.detectable == pytest.approx(0.03201, abs=5e-6)
    assert scipy_stats.t.ppf(0.975, 8) == pytest.approx(2.306004, abs=1e-6)
    assert result.detectable > (2.306004 + 0.841621) * 0.01  # above the normal approximation
    assert power.power(result.detectable, result.sd, 5, 5) == pytest.approx(0.80, abs=1e-9)
    assert result.reference_difference == pytest.approx(-0.056914)
    assert result.n_for_reference == 3
    assert power.power(-0.056914, result.sd, 2, 2) < 0.8 <= power.power(-0.056914, result.sd, 3, 3)


@pytest.mark.parametrize(("effect", "n"), [(0.2, 394), (0.5, 64), (0.8, 26), (1.0, 17)])
def test_n_needed_matches_cohens_table(effect: float, n: int) -> None:
    """Cohen (1988), Table 2.4.1 / G*Power exact two-sample t: n per group for d at α = 0.05 two-sided, 80%."""
    assert power.n_needed(effect * 0.03, 0.03) == n


def test_detectable_difference_at_ten_runs_per_group_matches_gpower() -> None:
    """G*Power 'sensitivity' for two groups of 10, α 0.05 two-sided, power 0.80: d = 1.3249."""
    assert power.detectable_difference(1.0, 10, 10) == pytest.approx(1.3249, abs=1e-4)
    assert power.detectable_difference(0.02, 10, 10) == pytest.approx(0.026499, abs=1e-5)


def test_no_spread_no_number() -> None:
    assert power.pair_power([-0.1], [-0.2, -0.3]).detectable is None
    same = power.pair_power([-0.1, -0.1], [-0.1, -0.1])
    assert same.sd == 0.0 and same.detectable is None and same.n_for_reference is None
    assert same.power_at_reference is None
    assert power.n_needed(0.0, 0.02) is None
    assert power.n_needed(1e-6, 1.0, max_n=1000) is None


def test_paper_difference_is_the_published_repeats() -> None:
    def delta(name: str) -> float:
        report = json.loads((PAPER_RUNS / name).read_text())
        return float(report["best_val_bpb"] - report["baseline_bpb"])

    assert pytest.approx(delta("C1.json") - delta("A1.json"), abs=1e-9) == power.PAPER_C_MINUS_A


def test_ties_and_headroom_match_the_hand_computation() -> None:
    """Bests [2.44093, 2.5, 2.44093, 2.6, 2.5, 2.44093000000000004]: 2.44093 three times (the last differs
    only by float noise below 1e-9), 2.5 twice, 2.6 once: 5 runs tied, the largest tie 3 runs at 2.44093.
    Baselines all 3.1; best known 2.40: mean best = (3 × 2.44093 + 2 × 2.5 + 2.6) / 6 = 14.92279 / 6 =
    2.487132; gap = 2.487132 − 2.40 = 0.087132; share = (3.1 − 2.487132) / (3.1 − 2.40) = 0.612868 / 0.70 =
    0.875526; group best 2.44093."""
    bests = [2.44093, 2.5, 2.44093, 2.6, 2.5, 2.44093000000000004]
    tied = power.ties(bests)
    assert (tied.runs_tied, tied.largest, tied.value) == (5, 3, 2.44093)
    assert power.ties([2.5, 2.6]).as_dict() == {"runs_tied": 0, "largest": 1, "value": None}
    room = power.headroom([3.1] * 6, bests, 2.40)
    assert room.mean_best == pytest.approx(2.487132, abs=1e-6)
    assert room.gap == pytest.approx(0.087132, abs=1e-6)
    assert room.share == pytest.approx(0.875526, abs=1e-6)
    assert room.group_best == 2.44093
    assert power.headroom([3.1], [2.9], None).share is None
