"""The step lease: who holds a run's next step, and when another worker may take it over.

A claim is a conditional UPDATE on the run row (step ticket + lease), so two workers never run
the same step. The lease records its holder's host, kernel identity and pid, and a heartbeat
thread renews it every couple of seconds. A step may be taken over when its lease expired, or
at once when its holder is gone: on the same machine (same kernel and pid namespace, so pids
mean the same thing) its process no longer runs; on another, its heartbeat is older than
stale_heartbeat_seconds(). What the dead holder was doing is kept as an InterruptedAttempt.

Several machines: every time in a lease (heartbeat, expiry, "now") is the database's clock, never a
host's, so hosts whose clocks disagree by seconds judge a holder alike. Every claim raises the run's
lease ticket; a holder commits its result only in a transaction that locks the run row and finds its
own owner and ticket still there (commit_as_holder). A holder that was cut off by a partition and
taken over therefore changes nothing when it comes back: its refused result is kept on its
interrupted attempt (fenced), and it goes on with other work. A holder whose database connection
broke keeps training and retries its commit until the database answers again.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Max, QuerySet
from django.db.models.functions import Now

from ..models import ACTIVE_RUN_STATUSES, InterruptedAttempt, Run, RunStatus
from . import run_status
from .control import enqueue_step
from .step_errors import StepAborted

logger = logging.getLogger(__name__)

HOLDER_FIELDS = (
    "lease_owner", "lease_expires_at", "lease_host", "lease_node", "lease_pid", "lease_heartbeat_at", "lease_ticket",
)
# The database connection broke (a restart, a partition, a killed backend): worth retrying.
CONNECTION_ERRORS = (OperationalError, InterfaceError)
T = TypeVar("T")


class Fenced(StepAborted):
    """The holder's commit was refused: another worker took the step over (its ticket is not current)."""


def database_now_plus(seconds: float) -> ExpressionWrapper:
    """The database's clock plus `seconds`, as an expression (never a host's clock)."""
    return ExpressionWrapper(Now() + timedelta(seconds=seconds), output_field=DateTimeField())


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


def _holder_fields(owner: str) -> dict[str, Any]:
    return {
        "lease_owner": owner,
        "lease_expires_at": database_now_plus(settings.STEP_LEASE_SECONDS),
        "lease_host": socket.gethostname()[:255],
        "lease_node": this_node(),
        "lease_pid": os.getpid(),
        "lease_heartbeat_at": Now(),
        "lease_ticket": F("lease_ticket") + 1,
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
        ticket=lease["lease_ticket"],
        reason=reason,
        progress=progress,
    )
    logger.warning("run %s: step %s taken over from %s: %s", run_id, index, lease["lease_owner"], reason)


def _take_from_dead_holder(
    candidates: QuerySet[Run], run_id: int, write: Callable[[QuerySet[Run]], int]
) -> bool | None:
    """Compare-and-swap the lease away from a gone holder (recording its attempt); `write` updates the
    rows still held by that holder (and clears the live progress of the step it lost).

    Returns True if taken, False if the holder may still be alive, None if there was no holder.
    The holder is judged on the database's clock, read in the same query as its lease.
    """
    row = candidates.annotate(db_now=Now()).values(*HOLDER_FIELDS, "live_progress", "db_now").first()
    if row is None:
        return False
    if not row["lease_owner"]:
        return None
    reason = holder_gone_reason(row, row["db_now"])
    if reason is None:
        return False
    taken = write(candidates.filter(lease_owner=row["lease_owner"], lease_ticket=row["lease_ticket"]))
    if taken:
        _record_interrupted(run_id, row, row["live_progress"] or {}, reason)
    return bool(taken)


def claim_step(run_id: int, ticket: int, owner: str) -> int | None:
    """Claim the run's step for `owner` if the step ticket is current and nobody alive holds it.

    Returns the lease ticket this claim holds (every commit of the step must carry it), or None.
    """
    new_fields = _holder_fields(owner)
    with transaction.atomic():
        candidates = Run.all_objects.filter(pk=run_id, step_ticket=ticket, status__in=run_status.CLAIMABLE)
        claimed = {**new_fields, "steps_claimed": F("steps_claimed") + 1}
        taken = _take_from_dead_holder(candidates, run_id,
                                       lambda rows: run_status.claim(rows, live_progress={}, **claimed))
        if taken is None:
            taken = bool(run_status.claim(candidates.filter(lease_owner=""), **claimed))
        held = current_ticket(run_id, owner) if taken else None
    if taken and Run.all_objects.filter(pk=run_id, started_at__isnull=True).update(started_at=Now()):
        run_status.announce_started(run_id)
    return held


def current_ticket(run_id: int, owner: str) -> int | None:
    """The lease ticket `owner` holds on the run, or None if it holds no lease there."""
    return Run.all_objects.filter(pk=run_id, lease_owner=owner).values_list("lease_ticket", flat=True).first()


def renew_lease(run_id: int, owner: str, ticket: int | None = None) -> bool:
    holding = Run.all_objects.filter(pk=run_id, lease_owner=owner)
    if ticket is not None:
        holding = holding.filter(lease_ticket=ticket)
    return bool(holding.update(lease_expires_at=database_now_plus(settings.STEP_LEASE_SECONDS),
                               lease_heartbeat_at=Now()))


def release_lease(run_id: int, owner: str) -> bool:
    return bool(Run.all_objects.filter(pk=run_id, lease_owner=owner).update(**_released_fields()))


def release_gone_holders(run_ids: list[int] | None = None) -> list[int]:
    """Free the leases of active runs whose holder is gone (recording each interrupted attempt).

    Returns the runs freed; the caller queues their next step.
    """
    active = Run.all_objects.filter(status__in=ACTIVE_RUN_STATUSES).exclude(lease_owner="")
    if run_ids is not None:
        active = active.filter(pk__in=run_ids)
    freed = []
    released = _released_fields()
    for run_id in active.values_list("pk", flat=True):
        with transaction.atomic():
            if _take_from_dead_holder(Run.all_objects.filter(pk=run_id), run_id,
                                      lambda rows: rows.update(live_progress={}, **released)):
                freed.append(run_id)
    return freed


def steps_without_holder(queued_seconds_ago: float | None) -> list[tuple[int, int]]:
    """(run, step ticket) of started runs that nobody holds and whose step task was queued more than
    `queued_seconds_ago` ago by the database's clock (all of them when None: after a broker restart
    without persistence every queued task is gone)."""
    waiting = Run.all_objects.filter(status__in=ACTIVE_RUN_STATUSES, lease_owner="", last_enqueued_at__isnull=False)
    if queued_seconds_ago is not None:
        waiting = waiting.filter(last_enqueued_at__lt=database_now_plus(-queued_seconds_ago))
    return list(waiting.values_list("pk", "step_ticket"))


# -- committing as the holder (fencing) ------------------------------------------------------------


def retrying_database(what: str, action: Callable[[], T], give_up_after: float | None = None) -> T:
    """Run `action` (its own transaction), retrying while the database connection is broken.

    A restarted or unreachable database must not lose a step that is done: the holder keeps asking
    until the database answers (then the fence decides) or `give_up_after` seconds have passed.
    """
    deadline = time.monotonic() + (settings.STEP_COMMIT_RETRY_SECONDS if give_up_after is None else give_up_after)
    pause = 0.2
    while True:
        try:
            return action()
        except CONNECTION_ERRORS as error:
            connection.close()  # the next try opens a fresh connection
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("%s: the database did not answer (%s); retrying in %.1f s",
                           what, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
                           pause)
            time.sleep(pause)  # back-off between reconnection attempts
            pause = min(pause * 2, 5.0)


def commit_as_holder(run_id: int, owner: str, ticket: int, write: Callable[[], T], what: str,
                     late_result: Callable[[], dict[str, Any]]) -> T:
    """Commit `write()` in one transaction that locks the run row and finds this holder's owner and
    lease ticket still there. If another worker took the step over, nothing is written, the refused
    result is kept on this holder's interrupted attempt, and Fenced is raised."""

    def attempt() -> tuple[bool, T | None]:
        with transaction.atomic():
            holding = Run.all_objects.select_for_update().filter(pk=run_id, lease_owner=owner, lease_ticket=ticket)
            if not holding.exists():
                return False, None
            return True, write()

    committed, result = retrying_database(f"run {run_id}: recording {what}", attempt)
    if not committed:
        retrying_database(f"run {run_id}: recording the refused {what}",
                          lambda: record_fenced(run_id, owner, ticket, {"what": what, **late_result()}))
        raise Fenced(f"{what} was refused: the lease (ticket {ticket}) was taken over by another worker")
    return result  # type: ignore[return-value]


def record_fenced(run_id: int, owner: str, ticket: int, result: dict[str, Any]) -> None:
    """Keep a refused late result on the attempt that was taken over (or on a new one, if the lease
    was freed without a takeover record, e.g. by a cancel)."""
    attempt = InterruptedAttempt.objects.filter(run_id=run_id, holder=owner, fenced_at__isnull=True).last()
    if attempt is None:
        attempt = InterruptedAttempt(run_id=run_id, index=result.get("index", 0), holder=owner,
                                     host=socket.gethostname()[:255], pid=os.getpid(), ticket=ticket,
                                     reason="its lease was no longer its own when it tried to commit")
    attempt.fenced_at = Now()
    attempt.fenced_result = result
    attempt.save()
    logger.warning("run %s: refused the late %s of %s (ticket %s): the step was taken over",
                   run_id, result.get("what"), owner, ticket)


class LeaseKeeper(threading.Thread):
    """Renews the step's lease (and its heartbeat) every few seconds while the step runs here.

    A broken database connection is not a lost lease: the keeper reconnects at its next beat. Only
    the database saying the lease is no longer this holder's (taken over) sets `lost`.
    """

    def __init__(self, run_id: int, owner: str, ticket: int | None = None) -> None:
        super().__init__(daemon=True, name=f"lease-{run_id}")
        self.run_id = run_id
        self.owner = owner
        self.ticket = current_ticket(run_id, owner) if ticket is None else ticket
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(heartbeat_seconds()):
                try:
                    renewed = renew_lease(self.run_id, self.owner, self.ticket)
                except CONNECTION_ERRORS as error:
                    logger.warning("run %s: could not renew the lease (%s); retrying", self.run_id, error)
                    connection.close()
                    continue
                if not renewed:
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
