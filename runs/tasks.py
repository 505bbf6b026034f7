"""Celery tasks of the search engine: one task per iteration step, plus the lease reaper."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.db.models import Q
from django.utils import timezone

from .models import ACTIVE_RUN_STATUSES, Run, WorkerHeartbeat

logger = logging.getLogger(__name__)
# A queued run whose step task vanished (e.g. Redis restarted without persistence) is noticed
# when the train queue is empty and its last enqueue is older than this.
LOST_TASK_GRACE_SECONDS = 30


@shared_task(name="runs.tasks.run_step", acks_late=True, reject_on_worker_lost=True)
def run_step(run_id: int, ticket: int) -> str:
    from .engine import execute_step

    return execute_step(run_id, ticket, worker=socket.gethostname())


@shared_task(name="runs.tasks.run_research_session", acks_late=True, reject_on_worker_lost=True)
def run_research_session(session_id: int) -> str:
    """A Level 2 session (queue `research`): LLM work never holds a training slot."""
    from .level2 import execute_research_session

    return execute_research_session(session_id)


@shared_task(name="runs.tasks.expire_reviews")
def expire_reviews() -> list[int]:
    """Runs whose review outlasted the experiment's timeout continue without the mechanism."""
    from .level2 import expire_reviews as expire

    return expire()


@shared_task(name="runs.tasks.record_worker_heartbeat")
def record_worker_heartbeat(hostname: str, queues: list[str]) -> int:
    """Record that a worker is alive; the dashboard lists workers seen recently."""
    beat, _ = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"queues": queues, "last_seen": timezone.now()}
    )
    return beat.pk


def train_queue_length() -> int | None:
    from bilevel_site.celery import app

    try:
        with app.connection_for_write() as conn:
            channel: Any = conn.default_channel  # a kombu Redis channel: it exposes its redis client
            return int(channel.client.llen("train"))
    except Exception:
        logger.warning("could not read the train queue length", exc_info=True)
        return None


@shared_task(name="runs.tasks.reap_expired_leases")
def reap_expired_leases() -> list[int]:
    """Re-enqueue steps whose worker died (lease expired) or whose queued task was lost."""
    from .control import enqueue_step

    now = timezone.now()
    stale = Q(lease_expires_at__lt=now)
    if train_queue_length() == 0:
        stale |= Q(lease_expires_at__isnull=True, last_enqueued_at__lt=now - timedelta(seconds=LOST_TASK_GRACE_SECONDS))
    revived = list(Run.objects.filter(stale, status__in=ACTIVE_RUN_STATUSES).values_list("pk", flat=True))
    for run_id in revived:
        Run.objects.filter(pk=run_id).update(lease_owner="", lease_expires_at=None)
        enqueue_step(run_id)
        logger.warning("re-enqueued run %s (lease expired or task lost)", run_id)
    return revived
