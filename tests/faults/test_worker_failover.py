"""Two workers; the one training a step is SIGKILLed; the step is retried on the *other* worker.

tests/engine/test_worker_runs.py covers a killed worker with a fresh one started afterwards.
Here both are up from the start (the survivor idles on the broker with its prefetch slot), the
trainer hangs (test hook) so the step is reliably in flight when the kill lands, and the
reaper's re-enqueued step must be taken and recorded by the survivor.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from runs.engine import control
from runs.models import IterationKind, Run, RunStatus
from runs.tasks import reap_expired_leases
from tests.conftest import ServiceProcess
from tests.engine.helpers import make_experiment
from tests.polling import wait_until
from trainer.__main__ import TEST_HOOK_ENV

from .conftest import env_with, process_is_gone, seed_baseline, start_worker, trainers_of

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]
LEASE = 3
TIMEOUT = 6


def parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def owner_of(trainer_pid: int, workers: list[ServiceProcess]) -> ServiceProcess:
    """The worker whose pool process launched this trainer (trainer -> pool child -> worker main)."""
    chain = [trainer_pid]
    while chain[-1] > 1 and len(chain) < 6:
        chain.append(parent(chain[-1]))
    owner = [w for w in workers if w.process.pid in chain]
    assert len(owner) == 1, (chain, [w.process.pid for w in workers])
    return owner[0]


def children_of(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def test_a_killed_workers_step_is_retried_on_the_surviving_worker(redis_client: Any) -> None:
    experiment = make_experiment(name="failover", objective="trainer", iterations=1, budget_value=1.2e11, threads=1)
    run = experiment.runs.get()
    seed_baseline(run)
    env = env_with(**{TEST_HOOK_ENV: "hang", "BILEVEL_TRAINER_TIMEOUT_SECONDS": str(TIMEOUT),
                      "BILEVEL_LEASE_SECONDS": str(LEASE)})
    workers = [start_worker(env, "failover-a"), start_worker(env, "failover-b")]
    orphans: list[int] = []
    try:
        control.start_experiment(experiment)
        first_trainer = wait_until(lambda: trainers_of(run.pk), 30, "a trainer")[0]
        # The hang hook's grandchild: no process-group kill reaches it when its worker dies, so the test does.
        orphans = wait_until(lambda: children_of(first_trainer), 10, "the hang hook's grandchild")
        doomed = owner_of(first_trainer, workers)
        survivor = next(w for w in workers if w is not doomed)
        os.killpg(os.getpgid(doomed.process.pid), signal.SIGKILL)
        doomed.process.wait()
        wait_until(lambda: process_is_gone(first_trainer), 10, "the orphaned trainer to die with its worker")

        def lease_expired() -> bool:
            expires = Run.objects.get(pk=run.pk).lease_expires_at
            return expires is not None and expires < timezone.now()

        wait_until(lease_expired, 30, "the dead worker's lease to expire")
        assert reap_expired_leases() == [run.pk]
        second_trainer = wait_until(lambda: trainers_of(run.pk), 30, "the retry")[0]
        assert owner_of(second_trainer, workers) is survivor
        wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 60, "the run to finish on the survivor")
    finally:
        for worker in workers:
            worker.stop()
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    assert list(run.iteration_set.values_list("index", flat=True)) == [0, 1], "nothing lost or recorded twice"
    proposal = run.iteration_set.get(kind=IterationKind.PROPOSAL)
    assert proposal.failure_class == "timeout"  # the survivor's own (hanging) training, recorded once
    assert run.steps_claimed == 2  # the killed attempt and the retry
    # The survivor ran the retried step (its own log says it received it; whether "succeeded" is
    # logged before stop() signals its pool process is a race, so it is not asserted).
    assert "runs.tasks.run_step" in survivor.output() and "received" in survivor.output()
