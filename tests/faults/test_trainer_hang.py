"""A training that hangs (never prints again, never exits) through a real worker.

The trainer's test hook spawns a grandchild in its process group and blocks forever. The hard
timeout (capped by BILEVEL_TRAINER_TIMEOUT_SECONDS) must kill the whole group, the iteration is
recorded as a crash of class `timeout`, and the run goes on to its next step and finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from runs.engine import control
from runs.models import IterationKind, IterationStatus, Run, RunStatus
from tests.engine.helpers import make_experiment
from tests.polling import wait_until
from trainer.__main__ import HANG_PID_FILE, TEST_HOOK_ENV

from .conftest import env_with, process_is_gone, seed_baseline, start_worker, trainers_of

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]
TIMEOUT = 3


def test_a_hung_training_is_killed_with_its_group_recorded_as_timeout_and_the_run_goes_on(
    redis_client: Any,
) -> None:
    experiment = make_experiment(name="hang", objective="trainer", iterations=2, budget_value=1.2e11, threads=1)
    run = experiment.runs.get()
    seed_baseline(run)
    worker = start_worker(
        env_with(**{TEST_HOOK_ENV: "hang", "BILEVEL_TRAINER_TIMEOUT_SECONDS": str(TIMEOUT)}), "hang"
    )
    try:
        control.start_experiment(experiment)
        wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 90, "the run to finish")
    finally:
        worker.stop()

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    proposals = list(run.iteration_set.filter(kind=IterationKind.PROPOSAL).order_by("index"))
    assert [p.index for p in proposals] == [1, 2]
    for proposal in proposals:
        assert proposal.status == IterationStatus.CRASH
        assert proposal.failure_class == "timeout"
        assert f"hard timeout of {TIMEOUT:g} s" in proposal.error
        assert proposal.val_bpb is None and proposal.changes  # a real proposal, not a placeholder
        assert TIMEOUT <= proposal.wall_seconds < TIMEOUT + 30
        # The hook's grandchild shared the trainer's process group: the group kill took it too.
        workdir = Path(settings.TRAINER_WORKDIR) / f"run-{run.pk}" / f"iteration-{proposal.index}-seed-{run.seed}"
        grandchild = int((workdir / HANG_PID_FILE).read_text())
        assert process_is_gone(grandchild), f"grandchild {grandchild} of iteration {proposal.index} survived"
    assert trainers_of(run.pk) == []
    assert run.best_val_bpb == run.baseline_val_bpb  # crashes never move the best
