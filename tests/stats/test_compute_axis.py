"""Cumulative seconds per run, aligned with the running-best series (baseline, proposal 1, ...)."""

from __future__ import annotations

from typing import Any

import pytest

from runs.analysis.compute_axis import cumulative_seconds
from tests.dashboard_runs.conftest import make_experiment, make_iteration, make_run

pytestmark = pytest.mark.django_db


def test_seconds_accumulate_and_extra_evaluations_count_towards_their_proposal(users: Any) -> None:
    experiment = make_experiment(users.plain, groups=["A"])
    real = make_run(experiment, "A", 1)
    make_iteration(real, 0, wall_seconds=10.0)
    make_iteration(real, 1, kind="baseline_repeat", status="baseline", wall_seconds=5.0)
    make_iteration(real, 2, wall_seconds=7.0)
    make_iteration(real, 3, kind="reevaluation", status="keep", wall_seconds=2.0)
    make_iteration(real, 4, wall_seconds=1.0)
    surrogate = make_run(experiment, "A", 2)
    make_iteration(surrogate, 0, wall_seconds=0.1, simulated_seconds=30.0)
    make_iteration(surrogate, 1, wall_seconds=0.1, simulated_seconds=31.0)
    seconds = cumulative_seconds([real.pk, surrogate.pk], {surrogate.pk})
    assert seconds[real.pk] == [15.0, 24.0, 25.0]
    assert seconds[surrogate.pk] == [30.0, 61.0]
