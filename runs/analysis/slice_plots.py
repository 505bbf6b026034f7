"""Data for the slice plots above an iteration table (as optuna-dashboard's slice plot): for each
config parameter that varies among the filtered iterations with a val_bpb, the parameter's value
against val_bpb, one point per iteration. Built from the same filtered queryset as the table (and
the parallel coordinates), so the plots follow its filter.

Numeric parameters get a linear axis, or a log axis when positive and spanning more than LOG_SPAN;
anything else (strings, booleans, lists, mixed types) a categorical axis of its sorted values."""

from __future__ import annotations

import json
from typing import Any

from ..models import Group, Iteration
from .colours import colour
from .parallel_coordinates import numeric

LOG_SPAN = 50  # as the parallel coordinates: learning rates and the like span decades


def category(value: Any) -> str:
    """How a non-numeric value is shown on a categorical axis (and compared: 4 and 4.0 are one)."""
    if isinstance(value, str):
        return value
    if numeric(value):
        return format(float(value), "g")
    return json.dumps(value, sort_keys=True)  # booleans as true/false, lists and dicts as JSON


def _parameter(name: str, values: list[Any]) -> dict[str, Any] | None:
    """The axis of one parameter from its values among the points, or None when it does not vary."""
    if all(numeric(v) for v in values):
        low, high = min(map(float, values)), max(map(float, values))
        if low == high:
            return None
        return {"name": name, "kind": "numeric", "log": low > 0 and high / low > LOG_SPAN}
    categories = sorted({category(v) for v in values})
    if len(categories) < 2:
        return None
    return {"name": name, "kind": "categorical", "categories": categories}


def slice_plots(measured: tuple[list[Iteration], int], groups: list[str]) -> dict[str, Any]:
    """`measured`: measured_iterations() of the table's rows; `groups`: the legend (the experiment's
    groups, or the run's one), in order."""
    picked, total = measured
    seen: dict[str, list[Any]] = {}
    for iteration in picked:
        for name, value in (iteration.config or {}).items():
            if value is not None:
                seen.setdefault(name, []).append(value)
    params: list[dict[str, Any]] = []
    constant: list[dict[str, str]] = []
    for name in sorted(seen):
        parameter = _parameter(name, seen[name])
        if parameter is None:
            constant.append({"name": name, "value": category(seen[name][0])})
        else:
            params.append(parameter)

    def x(parameter: dict[str, Any], config: dict[str, Any]) -> float | str | None:
        value = config.get(parameter["name"])
        if value is None:
            return None
        return float(value) if parameter["kind"] == "numeric" else category(value)

    points = [
        {"run": it.run.pk, "group": it.run.group, "repeat": it.run.repeat, "index": it.index, "status": it.status,
         "val_bpb": it.val_bpb, "x": [x(p, it.config or {}) for p in params]}
        for it in picked
    ]
    runs = {it.run.pk: it.run for it in picked}
    # A baseline line means something only for one run: several runs have several baselines.
    baseline = next(iter(runs.values())).baseline_val_bpb if len(runs) == 1 else None
    return {
        "params": params,
        "constant": constant,
        "points": points,
        "total": total,
        "shown": len(points),
        "baseline": baseline,
        "groups": [{"group": g, "label": str(Group(g).label), "colour": colour(g)} for g in groups],
    }
