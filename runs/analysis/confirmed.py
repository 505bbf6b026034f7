"""A run's confirmed Δ and real Δ, read from its Confirmation rows (engine/confirmation.py trains them).

Replicate i trained the baseline config and the best config with the same fresh seed, so the
confirmed Δ is the mean of the paired differences, with a t interval when there are two or more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..models import Confirmation, ConfirmationRole, Run
from . import stats


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


Deltas = dict[int, ConfirmedDelta | None]


def re_trained_deltas(runs: Iterable[Run]) -> tuple[Deltas, Deltas]:
    """Every run's confirmed Δ on its objective and its real Δ (a surrogate run's best and baseline trained on the
    real trainer), None while incomplete or not asked for; in one query."""
    by_id = {run.pk: run for run in runs}
    rows: dict[tuple[int, bool], list[tuple[str, int, float | None]]] = {
        (pk, real): [] for pk in by_id for real in (False, True)
    }
    for run_id, real, role, replicate, value in Confirmation.objects.filter(run__in=list(by_id)).values_list(
        "run_id", "real", "role", "replicate", "val_bpb"
    ):
        rows[run_id, real].append((role, replicate, value))
    confirmed = {pk: confirmed_delta(rows[pk, False], run.experiment.confirmation_repeats) for pk, run in by_id.items()}
    on_trainer = {
        pk: confirmed_delta(rows[pk, True], run.experiment.real_confirmation_seeds) for pk, run in by_id.items()
    }
    return confirmed, on_trainer


def confirmed_deltas(runs: Iterable[Run]) -> Deltas:
    """Every run's confirmed Δ on its objective (None while incomplete or not wanted)."""
    return re_trained_deltas(runs)[0]


def real_deltas(runs: Iterable[Run]) -> Deltas:
    """Every surrogate run's real Δ (None while incomplete or not asked for)."""
    return re_trained_deltas(runs)[1]
