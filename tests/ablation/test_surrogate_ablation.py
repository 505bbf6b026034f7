"""A full ablation on the surrogate through real Celery workers: 5 groups × 10 repeats × 30 iterations."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db.models import Count
from django.test import Client

from runs.engine import control
from runs.models import IterationKind, Run, RunStatus
from tests.conftest import start_celery_worker
from tests.engine.helpers import make_experiment
from tests.polling import wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
GROUPS = ["A", "B", "C", "D", "R"]
REPEATS = 10
ITERATIONS = 30


def test_full_surrogate_ablation_completes_and_its_comparison_renders(redis_client: Any, users: Any) -> None:
    experiment = make_experiment(
        name="ablation",
        groups=GROUPS,
        repeats=REPEATS,
        iterations=ITERATIONS,
        strategy_interval=5,
        research_interval=2,
        review_gate=False,
    )
    workers = [start_celery_worker(name=f"ablation{i}") for i in range(2)]
    started = time.monotonic()
    try:
        control.start_experiment(experiment)
        wait_until(
            lambda: not experiment.runs.exclude(status=RunStatus.COMPLETED).exists(), 900, "all 50 runs to complete"
        )
    finally:
        for worker in workers:
            worker.stop()
    wall = time.monotonic() - started
    print(f"\nablation: {len(GROUPS)} groups × {REPEATS} repeats × {ITERATIONS} iterations in {wall:.1f} s")

    runs = list(experiment.runs.annotate(n=Count("iteration_set")))
    assert len(runs) == len(GROUPS) * REPEATS
    assert all(run.n == ITERATIONS + 1 for run in runs), "baseline + T proposals, none lost or doubled"
    # Paired seeds: repeat r has the same seed in every group, and every run starts from the same config.
    for repeat in range(1, REPEATS + 1):
        assert len({run.seed for run in runs if run.repeat == repeat}) == 1
    baselines = {str(it.config) for run in runs for it in run.iteration_set.filter(kind=IterationKind.BASELINE)}
    assert len(baselines) == 1
    assert {
        r.proposal_source
        for r in Run.objects.get(experiment=experiment, group="R", repeat=1).iteration_set.filter(
            kind=IterationKind.PROPOSAL
        )
    } == {"random"}
    assert experiment.runs.filter(group__in=["C", "D"], research_sessions__isnull=False).distinct().count() == 20

    client = Client()
    client.force_login(users.plain)
    response = client.get(f"/experiments/{experiment.pk}/compare/")
    assert response.status_code == 200
    for group in GROUPS:
        assert f">{group}<" in response.content.decode() or f"{group}:" in response.content.decode()
