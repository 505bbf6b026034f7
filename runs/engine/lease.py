"""The step lease: who holds a run's next step, and when another worker may take it over.

A claim is a conditional UPDATE on the run row (step ticket + lease), so two workers never run
the same step. The lease records its holder's host, kernel identity and pid, and a heartbeat
thread renews it every couple of seconds. A step may be taken over when its lease expired, or
at once when its holder is gone: on the same machine (same kernel and pid namespace, so pids
mean the same thing) its process no longer runs; on another, its heartbeat is older than
stale_heartbeat_seconds(). What the dead holder was doing is kept as an InterruptedAttempt.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from ..models import ACTIVE_RUN_STATUSES, InterruptedAttempt, Run, RunStatus
from .control import enqueue_step
from .events import publish_run_event

logger = logging.getLogger(__name__)

HOLDER_FIELDS = ("lease_owner", "lease_expires_at", "lease_host", "lease_node", "lease_pid", "lease_heartbeat_at")


def heartbeat_seconds() -> float:
    return min(settings.STEP_HEARTBEAT_SECONDS, settings.STEP_LEASE_SECONDS / 3)


def stale_heartbeat_seconds() -> float:
    # Five missed beats: a busy machine or a slow database write must not look like a death.
    return min(5 * heartbeat_seconds(), settings.STEP_LEASE_SECONDS)


@functools.cache
def this_node() -> str:
    """What makes pids comparable: the kernel's boot id and this process's pid namespace."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    boot_id = boot.read_text().strip() if boot.exists() else socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot_id}/{namespace}"[:120]


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:  # a zombie whose parent has not reaped it yet is dead too
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def holder_gone_reason(lease: dict[str, Any], now: datetime) -> str | None:
    """Why the lease's holder can be considered gone, or None if it may still be working."""
    expires, beat = lease["lease_expires_at"], lease["lease_heartbeat_at"]
    if expires is None or expires < now:
        return "its lease expired"
    where = f"pid {lease['lease_pid']} on {lease['lease_host'] or 'an unknown host'}"
    if lease["lease_node"] == this_node() and lease["lease_pid"]:
        # Here the pid says it all; a live but slow holder (a loaded machine) keeps its step.
        return None if pid_is_running(lease["lease_pid"]) else f"its worker process ({where}) is no longer running"
    if beat is not None and (now - beat).total_seconds() > stale_heartbeat_seconds():
        return f"its worker ({where}) sent no heartbeat for {(now - beat).total_seconds():.0f} s"
    return None


def _holder_fields(owner: str, now: datetime) -> dict[str, Any]:
    return {
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=settings.STEP_LEASE_SECONDS),
        "lease_host": socket.gethostname()[:255],
        "lease_node": this_node(),
        "lease_pid": os.getpid(),
        "lease_heartbeat_at": now,
    }


def _released_fields() -> dict[str, Any]:
    return {
        "lease_owner": "",
        "lease_expires_at": None,
        "lease_host": "",
        "lease_node": "",
        "lease_pid": None,
        "lease_heartbeat_at": None,
    }


def _record_interrupted(run_id: int, lease: dict[str, Any], progress: dict[str, Any], reason: str) -> None:
    index = progress.get("iteration")
    if index is None:
        last = Run.all_objects.filter(pk=run_id).aggregate(last=Max("iteration_set__index"))["last"]
        index = 0 if last is None else last + 1
    InterruptedAttempt.objects.create(
        run_id=run_id,
        index=index,
        holder=lease["lease_owner"],
        host=lease["lease_host"],
        pid=lease["lease_pid"],
        last_heartbeat_at=lease["lease_heartbeat_at"],
        reason=reason,
        progress=progress,
    )
    logger.warning("run %s: step %s taken over from %s: %s", run_id, index, lease["lease_owner"], reason)


def _take_from_dead_holder(
    candidates: Any, run_id: int, now: datetime, new_fields: dict[str, Any], **extra: Any
) -> bool | None:
    """Compare-and-swap the lease away from a gone holder (recording its attempt).

    Returns True if taken, False if the holder may still be alive, None if there was no holder.
    """
    row = candidates.values(*HOLDER_FIELDS, "live_progress").first()
    if row is None:
        return False
    if not row["lease_owner"]:
        return None
    reason = holder_gone_reason(row, now)
    if reason is None:
        return False
    taken = candidates.filter(lease_owner=row["lease_owner"]).update(live_progress={}, **new_fields, **extra)
    if taken:
        _record_interrupted(run_id, row, row["live_progress"] or {}, reason)
    return bool(taken)


def claim_step(run_id: int, ticket: int, owner: str) -> bool:
    """Claim the run's step for `owner` if the ticket is current and nobody alive holds it."""
    now = timezone.now()
    new_fields = _holder_fields(owner, now)
    with transaction.atomic():
        candidates = Run.all_objects.filter(pk=run_id, step_ticket=ticket, status__in=ACTIVE_RUN_STATUSES)
        extra = {"status": RunStatus.RUNNING, "steps_claimed": F("steps_claimed") + 1}
        taken = _take_from_dead_holder(candidates, run_id, now, new_fields, **extra)
        if taken is None:
            taken = bool(candidates.filter(lease_owner="").update(**new_fields, **extra))
    if taken and Run.all_objects.filter(pk=run_id, started_at__isnull=True).update(started_at=now):
        publish_run_event(run_id, {"type": "status", "run": run_id, "status": RunStatus.RUNNING, "detail": "started"})
    return taken


def renew_lease(run_id: int, owner: str) -> bool:
    now = timezone.now()
    return bool(
        Run.all_objects.filter(pk=run_id, lease_owner=owner).update(
            lease_expires_at=now + timedelta(seconds=settings.STEP_LEASE_SECONDS), lease_heartbeat_at=now
        )
    )


def release_lease(run_id: int, owner: str) -> bool:
    return bool(Run.all_objects.filter(pk=run_id, lease_owner=owner).update(**_released_fields()))


def release_gone_holders(run_ids: list[int] | None = None) -> list[int]:
    """Free the leases of active runs whose holder is gone (recording each interrupted attempt).

    Returns the runs freed; the caller queues their next step.
    """
    now = timezone.now()
    active = Run.all_objects.filter(status__in=ACTIVE_RUN_STATUSES).exclude(lease_owner="")
    if run_ids is not None:
        active = active.filter(pk__in=run_ids)
    freed = []
    for run_id in active.values_list("pk", flat=True):
        with transaction.atomic():
            if _take_from_dead_holder(Run.all_objects.filter(pk=run_id), run_id, now, _released_fields()):
                freed.append(run_id)
    return freed


def steps_without_holder(queued_before: datetime | None) -> list[int]:
    """Started runs that nobody holds and whose step task was queued before `queued_before`
    (all of them when None: after a broker restart without persistence every queued task is gone)."""
    waiting = Run.all_objects.filter(status__in=ACTIVE_RUN_STATUSES, lease_owner="", last_enqueued_at__isnull=False)
    if queued_before is not None:
        waiting = waiting.filter(last_enqueued_at__lt=queued_before)
    return list(waiting.values_list("pk", flat=True))


class LeaseKeeper(threading.Thread):
    """Renews the step's lease (and its heartbeat) every few seconds while the step runs here."""

    def __init__(self, run_id: int, owner: str) -> None:
        super().__init__(daemon=True, name=f"lease-{run_id}")
        self.run_id = run_id
        self.owner = owner
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(heartbeat_seconds()):
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
        if release_lease(run_id, owner) and Run.all_objects.filter(pk=run_id, status=RunStatus.RUNNING).exists():
            enqueue_step(run_id)
