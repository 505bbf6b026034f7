"""Celery tasks of Level 2 (queue `research`)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="mechanisms.tasks.run_research_session")
def run_research_session(session_id: int) -> str:
    from .research_session import execute_research_session

    return execute_research_session(session_id)
