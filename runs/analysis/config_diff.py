"""A config diff between any two iterations or runs. A reference is "RUN.INDEX" (one iteration)
or "RUN" (that run's best iteration, or its baseline while nothing beat it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..models import Iteration, Run

REFERENCE = re.compile(r"^\s*(\d{1,18})(?:\.(\d{1,9}))?\s*$")


class BadReference(ValueError):
    pass


@dataclass(frozen=True)
class Side:
    reference: str
    iteration: Iteration

    @property
    def label(self) -> str:
        run = self.iteration.run
        return f"run #{run.pk} ({run.group}{run.repeat}) · iteration #{self.iteration.index}"


@dataclass(frozen=True)
class Row:
    name: str
    a: Any
    b: Any

    @property
    def changed(self) -> bool:
        return self.a != self.b


def resolve(reference: str) -> Side:
    match = REFERENCE.match(reference or "")
    if not match:
        raise BadReference(f"“{reference[:40]}” is not RUN or RUN.ITERATION (e.g. 12 or 12.3)")
    run_id, index = int(match.group(1)), match.group(2)
    iterations = Iteration.objects.select_related("run").filter(run_id=run_id)
    if index is not None:
        found = iterations.filter(index=int(index)).first()
    else:
        best = Run.objects.filter(pk=run_id).values_list("best_iteration", flat=True).first()
        found = iterations.filter(index=best or 0).first()
    if found is None:
        raise BadReference(f"no iteration {reference.strip()}")
    return Side(reference.strip(), found)


def diff_rows(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """Every key of either config, changed ones first (then by name)."""
    rows = [Row(name, a.get(name), b.get(name)) for name in sorted(set(a) | set(b))]
    return sorted(rows, key=lambda row: (not row.changed, row.name))
