"""Celery tasks of the search engine: one task per iteration step, plus the lease reaper."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.db import close_old_connections
from django.utils import timezone

from .models import WorkerHeartbeat

logger = logging.getLogger(__name__)
# A queued run whose step task vanished (e.g. Redis restarted without persistence) is noticed
# when the train queue is empty and its last enqueue is older than this.
LOST_TASK_GRACE_SECONDS = 30


@shared_task(name="runs.tasks.run_step", acks_late=True, reject_on_worker_lost=True)
def run_step(run_id: int, ticket: int) -> str:
    from .engine.step import execute_step

    return execute_step(run_id, ticket, worker=socket.gethostname())


@shared_task(name="runs.tasks.run_research_session", acks_late=True, reject_on_worker_lost=True)
def run_research_session(session_id: int) -> str:
    """A Level 2 session (queue `research`): LLM work never holds a training slot."""
    from .engine.level2 import execute_research_session

    return execute_research_session(session_id)


@shared_task(name="runs.tasks.offer_replays", acks_late=True, reject_on_worker_lost=True)
def offer_replays(run_id: int) -> list[int]:
    """Create a finished run's missing paired replays and queue their steps (never done in a view)."""
    from .engine.replay import offer_replays as offer

    return offer(run_id)


@shared_task(name="runs.tasks.expire_reviews")
def expire_reviews() -> list[int]:
    """Runs whose review outlasted the experiment's timeout continue without the mechanism."""
    from .engine.level2 import expire_reviews as expire

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
def reap_expired_leases(broker_restarted: bool = False) -> list[int]:
    """Re-enqueue steps whose worker died (lease expired, holder gone) or whose queued task was lost.

    `broker_restarted`: Redis came back without its data, so every queued step task is gone.
    """
    from .engine.control import enqueue_step
    from .engine.lease import release_gone_holders, steps_without_holder

    revived = release_gone_holders()
    if broker_restarted:
        revived += steps_without_holder(queued_before=None)
    elif train_queue_length() == 0:
        revived += steps_without_holder(queued_before=timezone.now() - timedelta(seconds=LOST_TASK_GRACE_SECONDS))
    for run_id in revived:
        enqueue_step(run_id)
        logger.warning("re-enqueued run %s (its worker died or its task was lost)", run_id)
    return revived


@worker_ready.connect
def take_over_dead_steps(sender: Any = None, **kwargs: Any) -> None:
    """A worker (re)starting on a machine where one just died takes its step over at once,
    rather than after the dead worker's lease expires: its pid is checked, not its clock."""
    try:
        revived = reap_expired_leases()
    except Exception:  # a start-up nicety: the periodic reaper does the same a little later
        logger.warning("could not check for steps of dead workers at start-up", exc_info=True)
        return
    finally:
        close_old_connections()
    if revived:
        logger.warning("took over the steps of runs %s from dead workers", revived)
