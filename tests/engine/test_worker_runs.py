"""Runs through real Celery workers: a full short run, and a worker SIGKILLed mid-training."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from runs.engine import control
from runs.models import InterruptedAttempt, IterationKind, Run, RunStatus
from tests.conftest import ServiceProcess, start_celery_worker, trainers_of
from tests.engine.helpers import make_experiment
from tests.polling import wait_until

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_full_short_run_goes_end_to_end_through_a_worker(celery_worker: ServiceProcess) -> None:
    experiment = make_experiment(groups=["B"], iterations=6, strategy_interval=3)
    control.start_experiment(experiment)
    run = experiment.runs.get()

    # The run ends inside its last step; the worker gives the lease up when that step returns.
    wait_until(lambda: Run.objects.filter(pk=run.pk, finished_at__isnull=False, lease_owner="").exists(), 120,
               "the run to finish and its last step to give the lease up")

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    assert list(run.iteration_set.values_list("index", flat=True)) == list(range(7))
    assert run.outer_cycles.count() == 1
    assert run.lease_owner == "" and run.lease_expires_at is None


@pytest.mark.slow
def test_a_worker_killed_mid_training_loses_nothing_and_leaves_no_trainer_behind(
    transactional_db: None, redis_client: Any
) -> None:
    experiment = make_experiment(objective="trainer", iterations=2, budget_value=1.2e11, threads=1)
    run = experiment.runs.get()
    first = start_celery_worker(name="doomed")
    control.start_experiment(experiment)
    wait_until(
        lambda: Run.objects.get(pk=run.pk).live_progress.get("iteration") == 1,
        240,
        "the first proposal to be training",
    )
    assert trainers_of(run.pk), "a trainer should be running"

    os.killpg(os.getpgid(first.process.pid), signal.SIGKILL)
    first.process.wait()
    first.stop()
    wait_until(lambda: not trainers_of(run.pk), 10, "the orphaned trainer to die with its worker")

    second = start_celery_worker(name="rescuer")
    try:
        # Starting on the machine where the holder died, it takes the step over at once (the
        # dead pid is proof enough), not after the lease expires.
        wait_until(lambda: InterruptedAttempt.objects.filter(run=run).exists(), 30, "the rescuer to take over")
        attempt = InterruptedAttempt.objects.get(run=run)
        assert attempt.index == 1 and "no longer running" in attempt.reason
        wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 300, "the run to finish on the new worker")
    finally:
        second.stop()

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    indexes = list(run.iteration_set.values_list("index", flat=True))
    assert indexes == [0, 1, 2], "no iteration lost or recorded twice"
    assert run.iteration_set.filter(kind=IterationKind.PROPOSAL).count() == 2
    assert run.steps_claimed >= 4  # baseline, the killed step, its retry, the last proposal
