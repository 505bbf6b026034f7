"""Fast takeover: a step whose holder is gone is claimed at once, and its attempt is kept.

The lease records the holder's machine identity, pid and heartbeat. A real process that has
exited stands in for a dead worker on this machine.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from runs.engine.lease import claim_step, release_gone_holders, this_node
from runs.models import InterruptedAttempt, Run
from tests.engine.helpers import make_experiment

pytestmark = pytest.mark.django_db


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def held_run(**lease: Any) -> Run:
    run = make_experiment(name="lease").runs.get()
    now = timezone.now()
    fields: dict[str, Any] = {
        "lease_owner": "old-worker:1",
        "lease_expires_at": now + timedelta(seconds=60),
        "lease_host": "here",
        "lease_node": this_node(),
        "lease_heartbeat_at": now,
        "live_progress": {"iteration": 3, "points": [[1, 5.0], [2, 4.5]], "step": 2},
    }
    Run.objects.filter(pk=run.pk).update(**{**fields, **lease})
    run.refresh_from_db()
    return run


def test_a_dead_holder_on_this_machine_is_taken_over_at_once_and_its_attempt_kept() -> None:
    run = held_run(lease_pid=dead_pid())
    assert claim_step(run.pk, run.step_ticket, "new-worker:2")
    run.refresh_from_db()
    assert run.lease_owner == "new-worker:2" and run.live_progress == {}
    attempt = InterruptedAttempt.objects.get(run=run)
    assert (attempt.index, attempt.holder, attempt.steps_done) == (3, "old-worker:1", 2)
    assert "no longer running" in attempt.reason


def test_a_live_holder_on_this_machine_keeps_its_step_even_when_its_heartbeat_is_late() -> None:
    import os

    # A loaded machine may delay a beat; here the pid shows the holder is alive.
    run = held_run(lease_pid=os.getpid(), lease_heartbeat_at=timezone.now() - timedelta(seconds=30))
    assert not claim_step(run.pk, run.step_ticket, "new-worker:2")
    assert release_gone_holders() == []
    assert not InterruptedAttempt.objects.exists()


def test_a_dead_pid_on_another_machine_counts_only_once_its_heartbeat_is_stale() -> None:
    run = held_run(lease_pid=dead_pid(), lease_node="another-machine")
    assert not claim_step(run.pk, run.step_ticket, "new-worker:2")  # pids there mean other processes
    Run.objects.filter(pk=run.pk).update(lease_heartbeat_at=timezone.now() - timedelta(seconds=30))
    assert release_gone_holders() == [run.pk]
    run.refresh_from_db()
    assert run.lease_owner == "" and "no heartbeat for 30 s" in InterruptedAttempt.objects.get(run=run).reason
    assert claim_step(run.pk, run.step_ticket, "new-worker:2")


def test_the_run_page_and_its_snapshot_list_interrupted_attempts(client: Any, users: Any) -> None:
    run = held_run(lease_pid=dead_pid())
    assert claim_step(run.pk, run.step_ticket, "new-worker:2")
    client.force_login(users.plain)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "Interrupted attempts" in page and "#3" in page and "is no longer running" in page
    snapshot = client.get(f"/runs/{run.pk}/snapshot.json").json()
    assert [(a["iteration"], a["steps_done"]) for a in snapshot["interrupted_attempts"]] == [(3, 2)]
