"""Creating, starting, pausing, resuming and cancelling runs (used by views, the API and commands).

Every transition is a conditional UPDATE, so concurrent clicks and a worker finishing a step
cannot interleave into an impossible state.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from trainer.schema import config_to_json, default_config, validate_config

from ..models import GROUP_LEVELS, WAITING_RUN_STATUSES, Experiment, Run, RunStatus
from . import run_status
from .devices import queue_for
from .run_status import TransitionError


def can_control(user: Any, experiment: Experiment) -> bool:
    """Who may pause, resume and cancel, on pages and in the API: the experiment's creator, staff, or a
    holder of change_run."""
    if not user.is_authenticated:
        return False
    return bool(
        user.is_staff or experiment.created_by_id == user.pk or user.has_perm("runs.change_run")
    )


def create_runs(experiment: Experiment) -> list[Run]:
    """groups × repeats runs; repeat r of every group shares seed_base + r (paired seeds).

    The experiment's base config is resolved against the preset now and stored whole, so every
    run (and any later resume) starts from the same config even if a preset's defaults change.
    """
    resolved = validate_config(
        {**default_config(experiment.preset), **(experiment.base_config or {})}, preset=experiment.preset
    )
    experiment.base_config = config_to_json(resolved)
    experiment.save(update_fields=["base_config"])
    runs = []
    for group in experiment.groups:
        level_strategy, level_research = GROUP_LEVELS[group]
        for repeat in range(1, experiment.repeats + 1):
            runs.append(
                Run.objects.create(
                    experiment=experiment,
                    group=group,
                    repeat=repeat,
                    seed=experiment.seed_base + repeat,
                    level_strategy=level_strategy,
                    level_research=level_research,
                    random_control=group == "R",
                )
            )
    return runs


def enqueue_step(run_id: int) -> None:
    """Issue a new step ticket and queue a step task carrying it (older tickets become no-ops), on the
    queue of the device the run needs (a `gpu` run only reaches a worker with a GPU).

    The task is sent by name: this module is imported by the tasks, not the other way round.
    """
    Run.all_objects.filter(pk=run_id).update(step_ticket=F("step_ticket") + 1, last_enqueued_at=Now())
    ticket, preset, objective = Run.all_objects.values_list(
        "step_ticket", "experiment__preset", "experiment__objective").get(pk=run_id)
    queue = queue_for(preset, objective)
    transaction.on_commit(lambda: current_app.send_task("runs.tasks.run_step", args=[run_id, ticket], queue=queue))


def start_experiment(experiment: Experiment) -> None:
    if experiment.is_reference:
        raise TransitionError("a reference experiment (imported published runs) cannot be started")
    for run in experiment.runs.filter(status=RunStatus.QUEUED):
        enqueue_step(run.pk)


def _transition(run: Run, allowed: tuple[str, ...], target: str, detail: str) -> None:
    if not run_status.change_status(run.pk, allowed, target, detail):
        run.refresh_from_db(fields=["status"])
        raise TransitionError(f"run {run.pk} is {run.status}; cannot go to {target}")
    run.refresh_from_db()


def pause_run(run: Run) -> None:
    """The iteration in flight finishes and is recorded; no further step is started."""
    _transition(run, (RunStatus.QUEUED, RunStatus.RUNNING, *WAITING_RUN_STATUSES), RunStatus.PAUSED,
                "paused by a user")


def resume_run(run: Run) -> None:
    with transaction.atomic():
        _transition(run, (RunStatus.PAUSED,), RunStatus.QUEUED, "resumed")
        enqueue_step(run.pk)


def cancel_run(run: Run) -> None:
    """Stops the run; a training in flight is killed and its iteration is not recorded."""
    allowed = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED, *WAITING_RUN_STATUSES)
    if not run_status.end_run(run.pk, RunStatus.CANCELLED, "cancelled by a user", sources=allowed):
        run.refresh_from_db(fields=["status"])
        raise TransitionError(f"run {run.pk} is {run.status}; cannot go to {RunStatus.CANCELLED}")
    run.refresh_from_db()


def start_run(run: Run) -> None:
    """Queue a queued run's next step (e.g. one created without starting, or after a restart)."""
    if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        raise TransitionError(f"run {run.pk} is {run.status}; only queued or running runs can be started")
    enqueue_step(run.pk)
