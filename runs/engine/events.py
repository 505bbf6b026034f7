"""Publishing live events from workers to the run's channel group (Celery → Channels).

Events are a convenience for live pages: everything they carry is also in the database, so a
client that missed some (a reconnect, a Redis restart) catches up by reloading from the
database. Publishing therefore never fails a step, nor holds it up: after a failed publish (Redis
down or out of reach) this process drops events for a few seconds instead of waiting on each.

An event goes out only once the transaction that made it true has committed
(``transaction.on_commit``; at once outside a transaction): a page is never told of a change that
is then rolled back. The shapes below are the whole protocol that static/bilevel/run_page.js reads.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, NotRequired, TypedDict, cast

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)
QUIET_AFTER_FAILURE_SECONDS = 5.0
_quiet_until = [0.0]


class StatusEvent(TypedDict):
    type: Literal["status"]
    run: int
    status: str
    detail: str


class ProgressEvent(TypedDict):
    """One progress line of the trainer (trainer/train.py's progress_line), for the iteration in flight."""

    type: Literal["progress"]
    run: int
    iteration: int
    step: NotRequired[int]
    tokens: NotRequired[int]
    train_loss: NotRequired[float | None]
    lr: NotRequired[float]
    lr_multiplier: NotRequired[float]
    elapsed: NotRequired[float]
    budget_fraction: NotRequired[float]
    simulated_seconds: NotRequired[float]
    test_hook: NotRequired[str]


class IterationEvent(TypedDict):
    type: Literal["iteration"]
    run: int
    iteration: dict[str, Any]  # serializers.iteration_to_dict


class OuterCycleEvent(TypedDict):
    type: Literal["outer_cycle"]
    run: int
    cycle: dict[str, Any]  # serializers.outer_cycle_to_dict


class MechanismEvent(TypedDict):
    type: Literal["mechanism"]
    run: int
    attachment: int
    name: str
    status: str
    note: str


class ResearchEvent(TypedDict):
    type: Literal["research"]
    run: int
    session: int
    status: str
    detail: str
    attachment: int | None


class Level2Event(TypedDict):
    type: Literal["level2"]
    run: int
    panel: dict[str, Any]  # level2_progress.level2_panel


RunEvent = (StatusEvent | ProgressEvent | IterationEvent | OuterCycleEvent | MechanismEvent | ResearchEvent
            | Level2Event)


def run_group_name(run_id: int) -> str:
    return f"run-{run_id}"


def status_event(run_id: int, status: str, detail: str) -> StatusEvent:
    return {"type": "status", "run": run_id, "status": str(status), "detail": detail}


def progress_event(run_id: int, iteration: int, line: dict[str, Any]) -> ProgressEvent:
    """A trainer progress line (already checked by trainer.launch) as the event of the iteration in flight."""
    return cast(ProgressEvent, {**line, "type": "progress", "run": run_id, "iteration": iteration})


def publish_run_event(run_id: int, event: RunEvent) -> None:
    """Send `event` to the run's watchers once the current transaction commits (dropped if it rolls back)."""
    transaction.on_commit(lambda: _send(run_id, event))


def _send(run_id: int, event: RunEvent) -> None:
    layer = get_channel_layer()
    # Progress lines are many and the next one replaces them, so after a failure they are dropped for a
    # while; every other event (a status, an iteration) is what a page would otherwise never learn: a run
    # that completed in the quiet time after a Redis restart stayed "Running" on its page.
    if layer is None or (event.get("type") == "progress" and time.monotonic() < _quiet_until[0]):
        return
    try:
        async_to_sync(layer.group_send)(run_group_name(run_id), {"type": "run.event", "event": event})
    except Exception:  # a live-update hiccup must not fail training: the database is the record
        _quiet_until[0] = time.monotonic() + QUIET_AFTER_FAILURE_SECONDS
        logger.warning("could not publish %s event for run %s; dropping live events for %.0f s",
                       event.get("type"), run_id, QUIET_AFTER_FAILURE_SECONDS, exc_info=True)
