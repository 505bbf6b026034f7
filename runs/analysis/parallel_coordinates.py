"""Data for the parallel-coordinates plot above an iteration table: every filtered iteration with a
val_bpb, as its numeric config values, on the axes of the parameters that vary among them (plus
val_bpb). Built from the same filtered queryset as the table, so the plot follows its filter."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from ..models import Iteration

MAX_LINES = 2000  # beyond this an SVG plot stops being readable or fast; the note says so


def numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def measured_iterations(rows: QuerySet[Iteration]) -> tuple[list[Iteration], int]:
    """The filtered iterations with a val_bpb (the first MAX_LINES of them) and how many there are."""
    measured = rows.filter(val_bpb__isnull=False)
    return list(measured.select_related("run")[:MAX_LINES]), measured.count()


def parallel_coordinates(measured: tuple[list[Iteration], int]) -> dict[str, Any]:
    """`measured`: measured_iterations() of the table's rows (shared with the slice plots: one query)."""
    picked, total = measured
    values: dict[str, set[float]] = {}
    for iteration in picked:
        for name, value in (iteration.config or {}).items():
            if numeric(value):
                values.setdefault(name, set()).add(float(value))
    axes = sorted(name for name, seen in values.items() if len(seen) > 1)
    lines = [
        {"run": it.run.pk, "group": it.run.group, "repeat": it.run.repeat, "index": it.index, "status": it.status,
         "values": [it.config.get(name) if numeric((it.config or {}).get(name)) else None for name in axes]
         + [it.val_bpb]}
        for it in picked
    ]
    return {"axes": [*axes, "val_bpb"], "lines": lines, "total": total, "shown": len(lines)}
