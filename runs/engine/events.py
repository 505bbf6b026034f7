"""Publishing live events from workers to the run's channel group (Celery → Channels).

Events are a convenience for live pages: everything they carry is also in the database, so a
client that missed some (a reconnect, a Redis restart) catches up by reloading from the
database. Publishing therefore never fails a step, nor holds it up: after a failed publish (Redis
down or out of reach) this process drops events for a few seconds instead of waiting on each.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)
QUIET_AFTER_FAILURE_SECONDS = 5.0
_quiet_until = [0.0]


def run_group_name(run_id: int) -> str:
    return f"run-{run_id}"


def publish_run_event(run_id: int, event: dict[str, Any]) -> None:
    """Send `event` (JSON-able, with a "type" key such as "progress" or "iteration") to watchers of a run."""
    layer = get_channel_layer()
    if layer is None or time.monotonic() < _quiet_until[0]:
        return
    try:
        async_to_sync(layer.group_send)(run_group_name(run_id), {"type": "run.event", "event": event})
    except Exception:  # a live-update hiccup must not fail training: the database is the record
        _quiet_until[0] = time.monotonic() + QUIET_AFTER_FAILURE_SECONDS
        logger.warning("could not publish %s event for run %s; dropping live events for %.0f s",
                       event.get("type"), run_id, QUIET_AFTER_FAILURE_SECONDS, exc_info=True)
