"""The one owner of a run's status: every change of ``Run.status`` is made here.

Each change is one conditional UPDATE (so concurrent clicks, workers and the reaper cannot
interleave into an impossible state), is checked against the allowed edges below, and is announced
to live pages only after it commits. A run ends in exactly one place, ``end_run``: its status, its
finish time and the retirement of its mechanisms change together. Replays are runs too: every query
here goes through ``Run.all_objects``.

    queued           → running (a step claimed it) | paused | cancelled | failed
    running          → researching | awaiting review (Level 2 wait) | paused | cancelled | completed | failed
    researching      → awaiting review | running | paused | cancelled | failed
    awaiting review  → running | paused | cancelled | failed
    paused           → queued (resumed) | cancelled | completed | failed (the step in flight ended it)
    completed, cancelled, failed: final
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from mechanisms.lifecycle import retire_run_mechanisms

from ..models import Run, RunStatus
from .events import publish_run_event, status_event

S = RunStatus
EDGES: dict[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset({S.RESEARCHING, S.AWAITING_REVIEW, S.PAUSED, S.CANCELLED, S.COMPLETED, S.FAILED}),
    S.RESEARCHING: frozenset({S.AWAITING_REVIEW, S.RUNNING, S.PAUSED, S.CANCELLED, S.FAILED}),
    S.AWAITING_REVIEW: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED, S.FAILED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED, S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
    S.FAILED: frozenset(),
}
ENDINGS = frozenset({S.COMPLETED, S.CANCELLED, S.FAILED})
UNFINISHED = tuple(status for status in S if status not in ENDINGS)
# A claimed step runs: a queued run starts, a running one goes on (its next step).
CLAIMABLE = (S.QUEUED, S.RUNNING)
# A step ends its run from running, or from paused: a pause asked for during the last step must not
# leave a finished (or failed) run "paused".
STEP_HOLDS = (S.RUNNING, S.PAUSED)


class TransitionError(Exception):
    """The run is not in a state that allows this change."""


def check_edges(sources: Iterable[str], target: str) -> tuple[str, ...]:
    """`sources` as a tuple, once every source → target is an allowed edge (staying put counts as allowed)."""
    sources = tuple(sources)
    wrong = [source for source in sources if source != target and target not in EDGES[source]]
    if wrong:
        raise ValueError(f"a run cannot go from {', '.join(wrong)} to {target}")
    return sources


def change_status(
    run_id: int, sources: Iterable[str], target: str, detail: str, *, where: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move the run from one of `sources` to `target` (also setting `fields`), if it is in one and matches
    `where`; True if it moved. The status event goes out after commit."""
    if target in ENDINGS:
        raise ValueError("a run ends only through end_run")
    allowed = check_edges(sources, target)
    moved = Run.all_objects.filter(pk=run_id, status__in=allowed, **(where or {})).update(
        status=target, status_detail=detail, **fields
    )
    if moved:
        publish_run_event(run_id, status_event(run_id, target, detail))
    return bool(moved)


def end_run(run_id: int, target: str, detail: str, *, sources: Iterable[str] = UNFINISHED,
            where: dict[str, Any] | None = None) -> bool:
    """The run ends (completed, cancelled or failed) if it is in one of `sources`: finish time set, its
    mechanisms retired with it, one status event after commit. False if it was not in `sources`."""
    if target not in ENDINGS:
        raise ValueError(f"{target} does not end a run")
    allowed = check_edges(sources, target)
    with transaction.atomic():
        ended = Run.all_objects.filter(pk=run_id, status__in=allowed, **(where or {})).update(
            status=target, status_detail=detail, finished_at=timezone.now()
        )
        if ended:
            retire_run_mechanisms(run_id)
            publish_run_event(run_id, status_event(run_id, target, detail))
    return bool(ended)


def claim(rows: QuerySet[Run], **fields: Any) -> int:
    """A step is claimed (lease fields in `fields`): the run is running. How many rows changed (0 or 1)."""
    return rows.filter(status__in=check_edges(CLAIMABLE, S.RUNNING)).update(status=S.RUNNING, **fields)


def announce_started(run_id: int) -> None:
    publish_run_event(run_id, status_event(run_id, S.RUNNING, "started"))


def set_detail(run_id: int, status: str, detail: str, **fields: Any) -> None:
    """A new status detail (what the run is doing now, in `status`) without a change of status."""
    Run.all_objects.filter(pk=run_id).update(status_detail=detail, **fields)
    publish_run_event(run_id, status_event(run_id, status, detail))
