"""The step lease: who may work on a run's next iteration, renewed while the step works.

A step is claimed with a conditional UPDATE on the run row (the step ticket must match, and no
unexpired lease may be held), renewed every third of its length by a heartbeat thread, and
released when the step ends; the next step is queued only if the run is still running.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from .control import enqueue_step
from .events import publish_run_event
from .models import ACTIVE_RUN_STATUSES, Run, RunStatus


def claim_step(run_id: int, ticket: int, owner: str) -> bool:
    now = timezone.now()
    claimed = (
        Run.objects.filter(pk=run_id, step_ticket=ticket, status__in=ACTIVE_RUN_STATUSES)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(
            status=RunStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=settings.STEP_LEASE_SECONDS),
            steps_claimed=F("steps_claimed") + 1,
        )
    )
    if claimed and Run.objects.filter(pk=run_id, started_at__isnull=True).update(started_at=now):
        publish_run_event(run_id, {"type": "status", "run": run_id, "status": RunStatus.RUNNING, "detail": "started"})
    return bool(claimed)


def renew_lease(run_id: int, owner: str) -> bool:
    return bool(
        Run.objects.filter(pk=run_id, lease_owner=owner).update(
            lease_expires_at=timezone.now() + timedelta(seconds=settings.STEP_LEASE_SECONDS)
        )
    )


class LeaseKeeper(threading.Thread):
    """Renews the step's lease every third of its length while the step runs in this process."""

    def __init__(self, run_id: int, owner: str) -> None:
        super().__init__(daemon=True, name=f"lease-{run_id}")
        self.run_id = run_id
        self.owner = owner
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.STEP_LEASE_SECONDS / 3):
                if not renew_lease(self.run_id, self.owner):
                    self.lost.set()
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def release_lease_and_continue(run_id: int, owner: str) -> None:
    """Give up the lease; if the run should go on, queue its next step (a waiting run is not queued)."""
    with transaction.atomic():
        released = Run.objects.filter(pk=run_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
        if released and Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).exists():
            enqueue_step(run_id)
