"""A run's confirmed Δ, read from its Confirmation rows (engine/confirmation.py trains them).

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


def confirmed_deltas(runs: Iterable[Run]) -> dict[int, ConfirmedDelta | None]:
    """Every run's confirmed Δ (None while incomplete or not wanted), in one query."""
    by_id = {run.pk: run for run in runs}
    rows: dict[int, list[tuple[str, int, float | None]]] = {pk: [] for pk in by_id}
    for run_id, role, replicate, value in Confirmation.objects.filter(run__in=list(by_id)).values_list(
        "run_id", "role", "replicate", "val_bpb"
    ):
        rows[run_id].append((role, replicate, value))
    return {pk: confirmed_delta(rows[pk], by_id[pk].experiment.confirmation_repeats) for pk in by_id}
