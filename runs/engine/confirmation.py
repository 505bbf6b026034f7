"""Confirmation: when a run's proposals are done, re-train its best and its baseline config on fresh seeds.

A run's search Δ (best − baseline) is the minimum of many noisy evaluations minus one, so it is
biased low, and more so the more configs a run evaluates. The confirmed Δ re-measures both ends on
r seeds the search never used: replicate i trains the baseline config and the best config with the
same seed, so the seed-shared part of the noise cancels in their difference (as in the real
trainer, where a seed fixes initialisation and data order). Confirmed Δ = mean of the r paired
differences, with a t interval when r ≥ 2.

Each training is one step of the run, claimed under the step lease like an iteration: a worker that
dies mid-training loses only that training, which the next worker does again; a unique constraint
on (run, role, replicate) and the lease check at commit make every training count exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.db import IntegrityError, transaction

from trainer.outcomes import TrainingSummary

from ..models import Confirmation, ConfirmationRole, Experiment, Objective, Run, RunStatus
from .events import publish_run_event
from .lease import commit_as_holder
from .state import RunState, config_key
from .step_errors import StepAborted

# Far from the search seeds (run seed, +1000·k for baseline repeats, +7919 for re-evaluations).
CONFIRMATION_SEED_OFFSET = 104_729
DEFAULT_REPEATS = {Objective.SURROGATE: 3, Objective.TRAINER: 2}


def default_repeats(objective: str) -> int:
    return DEFAULT_REPEATS.get(Objective(objective), 2)


@dataclass(frozen=True)
class Planned:
    role: str
    replicate: int
    seed: int
    config: dict[str, Any]


def planned_trainings(run: Run, base_config: dict[str, Any], best_config: dict[str, Any]) -> list[Planned]:
    """Baseline and best on each fresh seed; a best that is the baseline config is not trained twice."""
    roles = [(ConfirmationRole.BASELINE, base_config)]
    if config_key(best_config) != config_key(base_config):
        roles.append((ConfirmationRole.BEST, best_config))
    return [
        Planned(str(role), replicate, run.seed + CONFIRMATION_SEED_OFFSET + replicate, config)
        for replicate in range(run.experiment.confirmation_repeats)
        for role, config in roles
    ]


class StepLike(Protocol):
    """What a confirmation needs of the engine's step (its lease, its training, its way to end the run)."""

    run_obj: Run
    state: RunState
    experiment: Experiment
    owner: str

    @property
    def ticket(self) -> int: ...

    def _evaluate(self, config: dict[str, Any], seed: int) -> TrainingSummary: ...

    def _finish(self, status: str, detail: str) -> None: ...


def confirm_or_finish(step: StepLike) -> str:
    """The step of a run whose proposals are done: the next confirmation training, or the end of the run."""
    run = step.run_obj
    planned = planned_trainings(run, step.state.base_config, step.state.best_config)
    done = set(Confirmation.objects.filter(run=run).values_list("role", "replicate"))
    todo = [p for p in planned if (p.role, p.replicate) not in done]
    if not todo:
        detail = f"all {step.experiment.iterations} proposals done"
        if planned:
            detail += f"; best and baseline confirmed on {run.experiment.confirmation_repeats} fresh seeds"
        step._finish(RunStatus.COMPLETED, detail)
        return "completed"
    training = todo[0]
    summary = step._evaluate(training.config, training.seed)
    detail = f"confirming: {len(planned) - len(todo) + 1} of {len(planned)} re-trainings done"

    def write() -> None:
        try:
            with transaction.atomic():
                Confirmation.objects.create(
                    run=run,
                    role=training.role,
                    replicate=training.replicate,
                    seed=training.seed,
                    config=training.config,
                    val_bpb=summary.val_bpb if summary.ok else None,
                    failure_class="" if summary.ok else summary.failure_class,
                    training_seconds=summary.training_seconds,
                )
        except IntegrityError as error:
            raise StepAborted(f"confirmation {training.role} #{training.replicate} was already recorded") from error
        Run.all_objects.filter(pk=run.pk).update(status_detail=detail, live_progress={})

    late = {"role": training.role, "replicate": training.replicate, "val_bpb": summary.val_bpb}
    commit_as_holder(run.pk, step.owner, step.ticket, write,
                     f"confirmation {training.role} #{training.replicate}", lambda: late)
    publish_run_event(run.pk, {"type": "status", "run": run.pk, "status": RunStatus.RUNNING, "detail": detail})
    return "confirmation"
