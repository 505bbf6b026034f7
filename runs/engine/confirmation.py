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

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from django.db import IntegrityError, transaction

from trainer.outcomes import TrainingSummary

from ..analysis import stats
from ..models import Confirmation, ConfirmationRole, Experiment, Objective, Run, RunStatus
from .events import publish_run_event
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
    with transaction.atomic():
        if not Run.objects.select_for_update().filter(pk=run.pk, lease_owner=step.owner).exists():
            raise StepAborted("the lease was lost before the confirmation could be recorded")
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
        Run.objects.filter(pk=run.pk).update(status_detail=detail, live_progress={})
    publish_run_event(run.pk, {"type": "status", "run": run.pk, "status": RunStatus.RUNNING, "detail": detail})
    return "confirmation"


@dataclass(frozen=True)
class ConfirmedDelta:
    delta: float
    ci_low: float | None
    ci_high: float | None
    pairs: int
    baseline: float | None
    best: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def confirmed_delta(rows: Sequence[tuple[str, int, float | None]], repeats: int) -> ConfirmedDelta | None:
    """From (role, replicate, val_bpb) rows: None until every planned training is recorded."""
    by_role: dict[str, dict[int, float | None]] = {}
    for role, replicate, value in rows:
        by_role.setdefault(role, {})[replicate] = value
    baseline = by_role.get(ConfirmationRole.BASELINE, {})
    if repeats == 0 or len(baseline) < repeats:
        return None
    best = by_role.get(ConfirmationRole.BEST)
    if best is not None and len(best) < repeats:
        return None
    if best is None:  # the best config is the baseline config: the same trainings, Δ 0 exactly
        best = baseline
    differences = [
        b - a for i in range(repeats) if (a := baseline.get(i)) is not None and (b := best.get(i)) is not None
    ]
    if not differences:
        return None
    summary = stats.summarize(differences)
    assert summary.mean is not None
    ok_base = [v for v in baseline.values() if v is not None]
    ok_best = [v for v in best.values() if v is not None]
    return ConfirmedDelta(
        delta=summary.mean,
        ci_low=summary.ci_low,
        ci_high=summary.ci_high,
        pairs=len(differences),
        baseline=sum(ok_base) / len(ok_base) if ok_base else None,
        best=sum(ok_best) / len(ok_best) if ok_best else None,
    )


def confirmed_deltas(runs: Iterable[Run]) -> dict[int, ConfirmedDelta | None]:
    """Every run's confirmed Δ (None while incomplete or not wanted), in one query."""
    by_id = {run.pk: run for run in runs}
    rows: dict[int, list[tuple[str, int, float | None]]] = {pk: [] for pk in by_id}
    for run_id, role, replicate, value in Confirmation.objects.filter(run__in=list(by_id)).values_list(
        "run_id", "role", "replicate", "val_bpb"
    ):
        rows[run_id].append((role, replicate, value))
    return {pk: confirmed_delta(rows[pk], by_id[pk].experiment.confirmation_repeats) for pk in by_id}
