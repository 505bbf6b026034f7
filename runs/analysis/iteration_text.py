"""An iteration's fields as people read them: its changes, the mechanisms that acted on it, its refused
attempts. Shared by the run page's template filters and the CSV/JSON export."""

from __future__ import annotations

import json
from typing import Any

from ..models import Iteration


def mechanism_names(iteration: Iteration) -> list[str]:
    """Mechanisms recorded as having influenced this iteration, in first-effect order."""
    names: list[str] = []
    for effect in iteration.mechanism_effects or []:
        name = effect.get("mechanism") if isinstance(effect, dict) else None
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def mechanism_activity(iteration: Iteration) -> list[dict[str, Any]]:
    """Per mechanism: every hook call made for this iteration, and every decision it changed."""
    calls = iteration.hook_calls if isinstance(iteration.hook_calls, dict) else {}
    effects = [e for e in iteration.mechanism_effects or [] if isinstance(e, dict)]
    names = list(calls) + [n for n in mechanism_names(iteration) if n not in calls]
    activity = []
    for name in names:
        raw = calls.get(name)
        per_hook: dict[str, Any] = raw if isinstance(raw, dict) else {}
        changed = [f"{e.get('effect')}: {e.get('detail', '')}" for e in effects if e.get("mechanism") == name]
        activity.append({
            "name": name,
            "calls": ", ".join(f"{hook} {count}" for hook, count in sorted(per_hook.items())) or "no hook called",
            "changed": changed,
        })
    return activity


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def changes_text(changes: Any) -> str:
    """{"P": {"old": 1, "new": 2}} → "P: 1 → 2" (one change per line)."""
    if not isinstance(changes, dict):
        return ""
    lines = []
    for name, change in changes.items():
        if isinstance(change, dict):
            lines.append(f"{name}: {format_value(change.get('old'))} → {format_value(change.get('new'))}")
        else:
            lines.append(f"{name}: {format_value(change)}")
    return "\n".join(lines)


def refused_attempts(iteration: Iteration) -> list[dict[str, str]]:
    """The refused attempts of an iteration, each with its reason and what was sent (for the run page)."""
    attempts = iteration.rejected_attempts if isinstance(iteration.rejected_attempts, list) else []
    return [
        {
            "attempt": str(a.get("attempt", "")),
            "source": str(a.get("source", "")),
            "reason": str(a.get("reason", "")),
            "sent": json.dumps(a["changes"]) if "changes" in a else "",
        }
        for a in attempts
        if isinstance(a, dict)
    ]
