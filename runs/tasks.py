"""Celery tasks of the search engine: one task per iteration step, plus the lease reaper."""

from __future__ import annotations

import base64
import json
import logging
import socket
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from .engine.devices import TRAIN_QUEUES, announce_worker
from .models import WorkerHeartbeat

logger = logging.getLogger(__name__)
# Kombu's Redis transport keeps delivered, unacknowledged messages (acks_late) in this hash.
UNACKED_HASH = "unacked"


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


def _step_of(raw: bytes | str) -> tuple[int, int] | None:
    """(run, ticket) of a run_step message as kombu stores it in Redis (queued, or unacknowledged:
    [message, exchange, routing key]); None for anything else."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        if message.get("headers", {}).get("task") != "runs.tasks.run_step":
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0]), int(args[1])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def steps_in_broker() -> set[tuple[int, int]] | None:
    """Every (run, ticket) whose step task the broker holds: queued on a train queue or delivered to a
    worker and not yet acknowledged. None if the broker cannot be read."""
    from bilevel_site.celery import app

    try:
        with app.connection_for_write() as conn:
            channel: Any = conn.default_channel  # a kombu Redis channel: it exposes its redis client
            client = channel.client
            raw = [item for queue in TRAIN_QUEUES for item in client.lrange(queue, 0, -1)]
            raw += list(client.hvals(UNACKED_HASH))
    except Exception:
        logger.warning("could not read the queued steps from the broker", exc_info=True)
        return None
    return {step for step in map(_step_of, raw) if step is not None}


@shared_task(name="runs.tasks.reap_expired_leases")
def reap_expired_leases(broker_restarted: bool = False) -> list[int]:
    """Re-enqueue steps whose worker died (lease expired, holder gone) or whose queued task was lost.

    A step nobody holds whose task is neither queued nor delivered (Redis restarted without its data,
    or flushed) is queued again once it has been missing for LOST_TASK_GRACE_SECONDS, without anyone
    having to say the broker restarted. `broker_restarted` re-queues every unheld step at once.
    Re-queueing issues a new step ticket, so a task that did survive becomes a no-op: never two.
    """
    from .engine.control import enqueue_step
    from .engine.lease import release_gone_holders, steps_without_holder

    revived = release_gone_holders()
    if broker_restarted:
        revived += [run_id for run_id, _ in steps_without_holder(queued_seconds_ago=None)]
    else:
        unheld = steps_without_holder(queued_seconds_ago=settings.LOST_TASK_GRACE_SECONDS)
        queued = steps_in_broker() if unheld else set()
        if queued is not None:
            revived += [run_id for run_id, ticket in unheld if (run_id, ticket) not in queued]
    for run_id in revived:
        enqueue_step(run_id)
        logger.warning("re-enqueued run %s (its worker died or its task was lost)", run_id)
    return revived


@worker_ready.connect
def take_over_dead_steps(sender: Any = None, **kwargs: Any) -> None:
    """A worker (re)starting on a machine where one just died takes its step over at once,
    rather than after the dead worker's lease expires: its pid is checked, not its clock.
    It also states what it is (machine, device, queues), so runs are routed and shown by device."""
    if sender is not None:
        try:
            announce_worker(sender.hostname, sorted(sender.app.amqp.queues.consume_from))
        except Exception:  # the heartbeat thread is not started; the site shows the worker as absent
            logger.warning("could not record this worker (machine, device, queues)", exc_info=True)
    try:
        revived = reap_expired_leases()
    except Exception:  # a start-up nicety: the periodic reaper does the same a little later
        logger.warning("could not check for steps of dead workers at start-up", exc_info=True)
        return
    finally:
        close_old_connections()
    if revived:
        logger.warning("took over the steps of runs %s from dead workers", revived)
