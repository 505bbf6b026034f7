"""Starting a Level 2 research session for a run (from the engine, at an outer-cycle boundary)."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from runs.models import Run

from .models import ResearchSession


def request_research_session(run: Run, cycle_index: int) -> ResearchSession | None:
    """Create the cycle's session once and queue it on `research`; None if it already exists."""
    from .tasks import run_research_session

    try:
        with transaction.atomic():
            session = ResearchSession.objects.create(
                run=run, outer_cycle_index=cycle_index, backend=run.experiment.agent_backend
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: run_research_session.delay(session.pk))
    return session
