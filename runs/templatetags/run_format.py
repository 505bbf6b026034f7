"""Formatting of run and iteration values in templates."""

from __future__ import annotations

from typing import Any

from django import template

from ..analysis.iteration_text import changes_text as _changes_text
from ..analysis.iteration_text import mechanism_activity as _mechanism_activity
from ..analysis.iteration_text import mechanism_names as _mechanism_names
from ..analysis.iteration_text import refused_attempts as _refused_attempts
from ..models import Iteration

register = template.Library()


@register.filter
def bpb(value: float | None) -> str:
    """val_bpb with four decimals (run-to-run noise is ~0.002), or an en dash when missing."""
    return "–" if value is None else f"{value:.4f}"


@register.filter
def signed_bpb(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


@register.filter
def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


@register.filter
def changes_text(changes: Any) -> str:
    return _changes_text(changes)


@register.filter
def mechanism_names(iteration: Iteration) -> list[str]:
    return _mechanism_names(iteration)


@register.filter
def mechanism_activity(iteration: Iteration) -> list[dict[str, Any]]:
    return _mechanism_activity(iteration)


@register.filter
def refused_attempts(iteration: Iteration) -> list[dict[str, str]]:
    return _refused_attempts(iteration)


@register.simple_tag
def next_sort(current: str, field: str) -> str:
    """The sort a column header links to: ascending first, then descending."""
    return f"-{field}" if current == field else field


@register.simple_tag
def sort_arrow(current: str, field: str) -> str:
    if current == field:
        return "\u00a0↑"
    if current == f"-{field}":
        return "\u00a0↓"
    return ""


@register.filter
def short_label(value: str) -> str:
    """A choice's value as a compact label ("baseline_repeat" → "baseline repeat")."""
    return str(value).replace("_", " ")
