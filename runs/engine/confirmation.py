"""Confirmation: when a run's proposals are done, re-train its best and its baseline config on fresh seeds.

A run's search Δ (best − baseline) is the minimum of many noisy evaluations minus one, so it is
biased low, and more so the more configs a run evaluates. The confirmed Δ re-measures both ends on
r seeds the search never used: replicate i trains the baseline config and the best config with the
same seed, so the seed-shared part of the noise cancels in their difference (as in the real
trainer, where a seed fixes initialisation and data order). Confirmed Δ = mean of the r paired
differences, with a t interval when r ≥ 2.

Each training is one step of the run, claimed under the step lease like an iteration: a worker that
dies mid-training loses only that training, which the next worker does again; a unique constraint
on (run, real, role, replicate) and the lease check at commit make every training count exactly once.

Real confirmation (surrogate experiments): the surrogate is a model, and a search can steer it where it
is wrong. With ``real_confirmation_repeats`` = r, the same best and baseline configs are then also trained
on the real trainer (``objective.evaluate_real``: the preset, 1 thread, the FLOP budget) on the same r
seeds, as steps of the run like the others, on the training queue: real Δ = mean of the paired
(best − baseline) real differences. The surrogate's re-trainings come first (milliseconds), then the real
ones (about a minute each on cpu-tiny).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.db import IntegrityError, transaction

from trainer.outcomes import TrainingSummary

from ..models import Confirmation, ConfirmationRole, Experiment, Objective, Run, RunStatus
from . import run_status
from .completion import complete_run
from .lease import commit_as_holder
from .objective import REAL_CONFIRMATION_THREADS, real_budget_flops
from .state import config_key
from .step_context import StepContext
from .step_errors import StepAborted

# Far from the search seeds (run seed, +1000·k for baseline repeats, +7919 for re-evaluations).
CONFIRMATION_SEED_OFFSET = 104_729
DEFAULT_REPEATS = {Objective.SURROGATE: 3, Objective.TRAINER: 2}
# Real confirmation: on by default for surrogate experiments; a real-trainer experiment's confirmation is real.
DEFAULT_REAL_REPEATS = {Objective.SURROGATE: 2, Objective.TRAINER: 0}


def default_repeats(objective: str) -> int:
    return DEFAULT_REPEATS.get(Objective(objective), 2)


def default_real_repeats(objective: str) -> int:
    return DEFAULT_REAL_REPEATS.get(Objective(objective), 0)


def wants_confirmation(experiment: Experiment) -> bool:
    """Whether a run's end waits for re-trainings (on the objective, on the real trainer, or both)."""
    return bool(experiment.confirmation_repeats or experiment.real_confirmation_seeds)


@dataclass(frozen=True)
class Planned:
    role: str
    replicate: int
    seed: int
    config: dict[str, Any]
    real: bool = False

    @property
    def key(self) -> tuple[bool, str, int]:
        return (self.real, self.role, self.replicate)


def planned_trainings(run: Run, base_config: dict[str, Any], best_config: dict[str, Any]) -> list[Planned]:
    """Baseline and best on each fresh seed, on the objective and then (surrogate experiments) on the real
    trainer on the same seeds; a best that is the baseline config is not trained twice."""
    roles = [(ConfirmationRole.BASELINE, base_config)]
    if config_key(best_config) != config_key(base_config):
        roles.append((ConfirmationRole.BEST, best_config))
    # A replay's credit compares confirmations on the objective; real trainings would make a surrogate
    # replay (seconds) cost minutes, so a replay has none.
    real_seeds = 0 if run.is_replay else run.experiment.real_confirmation_seeds
    repeats_by_kind = ((False, run.experiment.confirmation_repeats), (True, real_seeds))
    return [
        Planned(str(role), replicate, run.seed + CONFIRMATION_SEED_OFFSET + replicate, config, real)
        for real, repeats in repeats_by_kind
        for replicate in range(repeats)
        for role, config in roles
    ]


class Train(Protocol):
    """Trains one config on one seed within the step (its progress, its lease, its cancellation), on the
    experiment's objective or (``real``) on the real trainer: Step._evaluate."""

    def __call__(self, config: dict[str, Any], seed: int, real: bool = False) -> TrainingSummary: ...


def _end_detail(run: Run) -> str:
    experiment = run.experiment
    detail = f"all {experiment.iterations} proposals done"
    if experiment.confirmation_repeats:
        detail += f"; best and baseline confirmed on {experiment.confirmation_repeats} fresh seeds"
    if real := experiment.real_confirmation_seeds:
        detail += f"; re-trained on the real trainer on {real} seed{'s' if real > 1 else ''} (real Δ)"
    return detail


def confirm_or_finish(ctx: StepContext, train: Train) -> str:
    """The step of a run whose proposals are done: the next confirmation training, or the end of the run."""
    run = ctx.run
    planned = planned_trainings(run, ctx.state.base_config, ctx.state.best_config)
    done = {
        (real, role, replicate)
        for real, role, replicate in Confirmation.objects.filter(run=run).values_list("real", "role", "replicate")
    }
    todo = [p for p in planned if p.key not in done]
    if not todo:
        complete_run(ctx.run_id, _end_detail(run))
        return "completed"
    training = todo[0]
    summary = train(training.config, training.seed, real=training.real)
    if training.real:
        real_total = sum(1 for p in planned if p.real)
        real_done = real_total - sum(1 for p in todo if p.real) + 1
        detail = (f"real confirmation: {real_done} of {real_total} trainings on the real trainer done "
                  f"({REAL_CONFIRMATION_THREADS} thread, {real_budget_flops(run.experiment):.3g} FLOPs)")
    else:
        detail = f"confirming: {len(planned) - len(todo) + 1} of {len(planned)} re-trainings done"
    what = f"{'real ' if training.real else ''}confirmation {training.role} #{training.replicate}"

    def write() -> None:
        try:
            with transaction.atomic():
                Confirmation.objects.create(
                    run=run,
                    real=training.real,
                    role=training.role,
                    replicate=training.replicate,
                    seed=training.seed,
                    config=training.config,
                    val_bpb=summary.val_bpb if summary.ok else None,
                    failure_class="" if summary.ok else summary.failure_class,
                    training_seconds=summary.training_seconds,
                    budget_flops=real_budget_flops(run.experiment) if training.real else None,
                )
        except IntegrityError as error:
            raise StepAborted(f"{what} was already recorded") from error
        run_status.set_detail(run.pk, RunStatus.RUNNING, detail, live_progress={})

    late = {"real": training.real, "role": training.role, "replicate": training.replicate,
            "val_bpb": summary.val_bpb}
    commit_as_holder(run.pk, ctx.owner, ctx.ticket, write, what, lambda: late)
    return "real-confirmation" if training.real else "confirmation"
