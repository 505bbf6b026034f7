"""Iteration tables: one query for filtering and sorting, shared by pages, exports and commands.

A page shows a slice of `filtered_iterations(...)`; a CSV/JSON export streams all of it in
the same order, so a download holds exactly the rows the filter selects.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import ExpressionWrapper, F, FloatField, QuerySet

from ..models import Iteration, Objective
from ..serializers import iteration_to_dict
from .iteration_text import changes_text, mechanism_names

EXPORT_FORMATS = ("csv", "json")
# The sort keys a table accepts (IterationFilterForm offers them) → the ordered field.
SORTS = {
    "index": "index",
    "-index": "-index",
    "val_bpb": "val_bpb",
    "-val_bpb": "-val_bpb",
    "delta": "delta",
    "-delta": "-delta",
    "seconds": "wall_seconds",
    "-seconds": "-wall_seconds",
}

CSV_COLUMNS = [
    "run",
    "objective",
    "group",
    "repeat",
    "index",
    "kind",
    "status",
    "failure_class",
    "changes",
    "hypothesis",
    "val_bpb",
    "best_before",
    "delta_vs_best_before",
    "training_seconds",
    "eval_seconds",
    "agent_seconds",
    "overhead_seconds",
    "wall_seconds",
    "simulated_seconds",
    "extrapolated",
    "support_distance",
    "nearest_measured_val_bpb",
    "steps",
    "tokens",
    "mechanisms",
    "proposal_source",
    "decision_reason",
    "error",
    "host",
    "device",
]


def filtered_iterations(base: QuerySet[Iteration], filters: Mapping[str, Any]) -> QuerySet[Iteration]:
    """`base` narrowed by cleaned IterationFilterForm data, with `delta` annotated and a stable order."""
    rows = base.select_related("run__experiment").annotate(
        delta=ExpressionWrapper(F("val_bpb") - F("best_before"), output_field=FloatField())
    )
    if filters.get("status"):
        rows = rows.filter(status__in=filters["status"])
    if filters.get("kind"):
        rows = rows.filter(kind__in=filters["kind"])
    if filters.get("group"):
        rows = rows.filter(run__group__in=filters["group"])
    if filters.get("param"):
        rows = rows.filter(changes__has_key=filters["param"])
    if filters.get("q"):
        rows = rows.filter(hypothesis__icontains=filters["q"])
    if filters.get("min_bpb") is not None:
        rows = rows.filter(val_bpb__gte=filters["min_bpb"])
    if filters.get("max_bpb") is not None:
        rows = rows.filter(val_bpb__lte=filters["max_bpb"])

    sort = SORTS.get(filters.get("sort") or "index", "index")
    field = sort.lstrip("-")
    if field == "index":
        key = F("index").desc() if sort.startswith("-") else F("index").asc()
        # Index order within a run, runs in group/repeat order (the experiment-wide table).
        return rows.order_by("run__group", "run__repeat", "run_id", key)
    # Missing values (crashes have no val_bpb) go last in either direction.
    key = F(field).desc(nulls_last=True) if sort.startswith("-") else F(field).asc(nulls_last=True)
    return rows.order_by(key, "run__group", "run__repeat", "run_id", "index")


def _delta(iteration: Iteration) -> float | None:
    if iteration.val_bpb is None or iteration.best_before is None:
        return None
    return iteration.val_bpb - iteration.best_before


def _is_surrogate(iteration: Iteration) -> bool:
    return iteration.run.experiment.objective == Objective.SURROGATE


def _support_cells(iteration: Iteration) -> list[Any]:
    """Surrogate rows say whether the config was outside the measured support; other rows leave it blank."""
    if not _is_surrogate(iteration):
        return ["", "", ""]
    return [
        "yes" if iteration.extrapolated else "no",
        "" if iteration.support_distance is None else repr(iteration.support_distance),
        "" if iteration.nearest_measured_val_bpb is None else repr(iteration.nearest_measured_val_bpb),
    ]


def _spreadsheet_safe(text: str) -> str:
    # An LLM-written hypothesis starting with "=" would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_row(iteration: Iteration) -> list[Any]:
    run = iteration.run
    return [
        iteration.run_id,
        Objective(run.experiment.objective).label,  # a surrogate value says so wherever the file travels
        run.group,
        run.repeat,
        iteration.index,
        iteration.kind,
        iteration.status,
        iteration.failure_class,
        _spreadsheet_safe(changes_text(iteration.changes).replace("\n", "; ")),
        _spreadsheet_safe(iteration.hypothesis),
        "" if iteration.val_bpb is None else repr(iteration.val_bpb),
        "" if iteration.best_before is None else repr(iteration.best_before),
        "" if _delta(iteration) is None else repr(_delta(iteration)),
        iteration.training_seconds,
        iteration.eval_seconds,
        iteration.agent_seconds,
        iteration.overhead_seconds,
        iteration.wall_seconds,
        iteration.simulated_seconds if _is_surrogate(iteration) else "",
        *_support_cells(iteration),
        iteration.steps,
        iteration.tokens,
        _spreadsheet_safe("; ".join(mechanism_names(iteration))),
        _spreadsheet_safe(iteration.proposal_source),
        _spreadsheet_safe(iteration.decision_reason),
        _spreadsheet_safe(iteration.error),
        _spreadsheet_safe(iteration.host),
        _spreadsheet_safe(iteration.device),
    ]


def export_record(iteration: Iteration) -> dict[str, Any]:
    record = iteration_to_dict(iteration)
    record.update(
        group=iteration.run.group,
        repeat=iteration.run.repeat,
        delta_vs_best_before=_delta(iteration),
        objective=Objective(iteration.run.experiment.objective).label,
        mechanisms=mechanism_names(iteration),
    )
    return record


class _Echo:
    """A file-like object whose write() returns the line, so csv.writer can feed a generator."""

    def write(self, value: str) -> str:
        return value


def export_chunks(rows: Iterable[Iteration], fmt: str) -> Iterator[str]:
    """The rows as CSV or a JSON array, produced incrementally (for streaming responses and files)."""
    if fmt == "csv":
        writer = csv.writer(_Echo())
        yield writer.writerow(CSV_COLUMNS)
        for iteration in rows:
            yield writer.writerow(_csv_row(iteration))
    elif fmt == "json":
        yield "["
        for number, iteration in enumerate(rows):
            yield ("," if number else "") + "\n" + json.dumps(export_record(iteration), cls=DjangoJSONEncoder)
        yield "\n]\n"
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")


def iterate_rows(rows: QuerySet[Iteration], batch_size: int = 500) -> Iterator[Iteration]:
    """The rows in order, fetched in batches.

    The ordered ids are read first, so rows recorded during a long download neither shift nor
    duplicate what it contains; each batch is its own query, so no cursor has to outlive a
    thread (an ASGI response is produced across several).
    """
    ids = list(rows.values_list("pk", flat=True))
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        found = rows.model.objects.select_related("run__experiment").in_bulk(chunk)
        by_id = {pk: found[pk] for pk in chunk if pk in found}
        for pk in chunk:
            if pk in by_id:
                yield by_id[pk]
