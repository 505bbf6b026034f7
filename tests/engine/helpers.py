"""Helpers for engine tests: make experiments and drive runs step by step or wait for workers."""

from __future__ import annotations

from typing import Any

from runs.engine.control import create_runs
from runs.engine.step import execute_step
from runs.models import Experiment, Run


def make_experiment(**fields: Any) -> Experiment:
    defaults: dict[str, Any] = {
        "name": "engine test",
        "groups": ["A"],
        "iterations": 4,
        "strategy_interval": 2,
        "objective": "surrogate",
        "budget_kind": "flops",
        "budget_value": 1.5e12,
        "review_gate": True,
    }
    defaults.update(fields)
    experiment = Experiment.objects.create(**defaults)
    create_runs(experiment)
    return experiment


def drive(run: Run, max_steps: int = 200) -> list[str]:
    """Run a run's steps in this process until it finishes (what a worker would do, one step at a time)."""
    outcomes: list[str] = []
    for _ in range(max_steps):
        run.refresh_from_db()
        if run.is_finished or run.status == "paused":
            return outcomes
        outcomes.append(execute_step(run.pk, run.step_ticket, "test"))
    raise AssertionError(f"run {run.pk} did not finish in {max_steps} steps: {outcomes[-5:]}")


def drive_with_research(run: Run, max_steps: int = 200) -> None:
    """drive(), with each Level 2 session run here while the run waits for it (no workers: an LLM
    endpoint sees one request at a time, in the order a single worker would send them). Level 2 is
    a step: the run waits in "researching" until its session ends. Use it with the review gate off."""
    from mechanisms.models import ResearchSession, SessionStatus
    from runs.engine.level2 import execute_research_session

    for _ in range(max_steps):
        run.refresh_from_db()
        if run.is_finished:
            return
        if run.status == "researching":
            for session in ResearchSession.objects.filter(run=run, status=SessionStatus.RUNNING):
                execute_research_session(session.pk)
        elif run.status == "awaiting_review":
            raise AssertionError(f"run {run.pk} awaits a review: drive it with the review gate off")
        else:
            execute_step(run.pk, run.step_ticket, "test")
    raise AssertionError(f"run {run.pk} did not finish in {max_steps} steps")
