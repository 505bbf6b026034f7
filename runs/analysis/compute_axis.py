"""What a budget buys: for each run, the cumulative seconds spent after the baseline and each
proposal (training + evaluation + agent + overhead as measured; the surrogate's predicted time for
surrogate runs), aligned with the running-best series so val_bpb can be drawn against time."""

from __future__ import annotations

from collections import defaultdict

from ..models import Iteration, IterationKind

COUNTED_KINDS = (IterationKind.BASELINE, IterationKind.PROPOSAL)


def cumulative_seconds(run_ids: list[int], surrogate_runs: set[int]) -> dict[int, list[float]]:
    """run id -> [seconds after the baseline, after proposal 1, ...]. Re-evaluations and baseline
    repeats are spent too: they are added to the proposal they follow."""
    spent: dict[int, dict[int, float]] = defaultdict(dict)
    rows = (Iteration.objects.filter(run_id__in=run_ids)
            .order_by("run_id", "index")
            .values_list("run_id", "index", "kind", "wall_seconds", "simulated_seconds"))
    position: dict[int, int] = defaultdict(lambda: -1)
    for run_id, _index, kind, wall, simulated in rows:
        seconds = (simulated or 0.0) if run_id in surrogate_runs else (wall or 0.0)
        if kind in COUNTED_KINDS:
            position[run_id] += 1
        step = max(position[run_id], 0)
        spent[run_id][step] = spent[run_id].get(step, 0.0) + seconds
    result = {}
    for run_id, by_step in spent.items():
        total, series = 0.0, []
        for step in range(max(by_step) + 1):
            total += by_step.get(step, 0.0)
            series.append(round(total, 3))
        result[run_id] = series
    return result
