"""Checks that a Level 2 round's reply is an answer, not a well-formed echo of the question.

A 1.5B model's replies passed the format checks while saying nothing: the reply template's own
sentences as the diagnosis, a critique scoring every candidate 0, a diagnosis that cites nothing
the run did. Each check returns the defect in words, which the session quotes in its repair prompt
(and, if the repair has the same defect, records as the reason the session failed).
"""

from __future__ import annotations

import re
from typing import Any

from mechanisms.protocol import TraceRecord

# Sentences of the reply formats and repair errors (current and earlier wordings) that a model copies.
TEMPLATE_PHRASES = (
    "the failure mode you see in the trace",
    "what goes wrong in this run",
    "citing iteration numbers and parameter names",
    "source field",
    "the field the idea comes from",
    "3 or 4 candidates",
    "3 or 4 mechanisms",
    "3 or 4 different mechanisms",
    "must be a list of",
    "hooks it would use",
    "snake_case",
    "as named in the list",
    "one from each of these fields",
    "how that field's idea fixes",
)
_ITERATION_CITATION = re.compile(r"\b(?:iterations?|its?)\s*#?\s*\d+|#\d+", re.IGNORECASE)


def echoed_template(texts: list[str]) -> str | None:
    for text in texts:
        lowered = text.lower()
        for phrase in TEMPLATE_PHRASES:
            if phrase in lowered:
                return f"it repeats the reply format ({phrase!r}) instead of filling it in"
    return None


def trace_parameters(trace: list[TraceRecord]) -> set[str]:
    return {name for record in trace for name in (record.get("changes") or {})}


def explore_defect(explore: dict[str, Any], trace: list[TraceRecord]) -> str | None:
    """Why a well-formed explore reply is still unusable, or None."""
    candidates = explore.get("candidates") or []
    texts = [str(explore.get("diagnosis", ""))] + [
        str(c.get(key, "")) for c in candidates if isinstance(c, dict) for key in ("name", "idea", "field")
    ]
    echo = echoed_template(texts)
    if echo:
        return echo
    names = [str(c.get("name", "")).strip().lower() for c in candidates if isinstance(c, dict)]
    if len(set(names)) < len(names):
        return "two candidates have the same name: give each mechanism its own name"
    parameters = trace_parameters(trace)
    if not parameters:
        return None  # nothing happened yet that a diagnosis could cite
    diagnosis = str(explore.get("diagnosis", ""))
    cited = (any(p.lower() in diagnosis.lower() for p in parameters) or _ITERATION_CITATION.search(diagnosis)
             or quotes_a_measurement(diagnosis, trace))
    evidence = explore.get("evidence") if isinstance(explore.get("evidence"), list) else []
    changed = changes_by_iteration(trace)
    if evidence and not any(true_evidence(row, changed) for row in evidence):
        return f"no evidence row is true of the trace: {evidence_mismatch(evidence, changed)}"
    if not (cited or evidence):
        shown = ", ".join(sorted(parameters)[:6])
        return (f"the diagnosis names nothing from the trace: cite iterations (e.g. 'iteration 3'), the "
                f"parameters that were changed ({shown}) or val_bpb values measured in the trace")
    return None


def changes_by_iteration(trace: list[TraceRecord]) -> dict[Any, list[str]]:
    """The parameters each record of the trace changed, by iteration number."""
    return {record.get("iteration"): sorted(record.get("changes") or {}) for record in trace}


def true_evidence(row: Any, changed: dict[Any, list[str]]) -> bool:
    """Whether an evidence row names an iteration of the trace and a parameter that iteration changed."""
    return isinstance(row, dict) and row.get("parameter") in changed.get(row.get("iteration"), [])


def evidence_mismatch(evidence: list[Any], changed: dict[Any, list[str]]) -> str:
    """What the trace says about the iterations the evidence names, for the repair prompt."""
    facts = []
    for row in evidence[:3]:
        if not isinstance(row, dict):
            continue
        iteration = row.get("iteration")
        if iteration not in changed:
            facts.append(f"there is no iteration {iteration!r}")
        else:
            facts.append(f"iteration {iteration} changed {', '.join(changed[iteration]) or 'nothing'}, "
                         f"not {row.get('parameter')!r}")
    return "; ".join(facts) or "its rows are not objects"


_NUMBER = re.compile(r"\d+\.\d{2,}")


def quotes_a_measurement(text: str, trace: list[TraceRecord]) -> bool:
    """Whether the text quotes a val_bpb of the trace (to the decimals it gives, at least two): that is
    evidence from this run as much as an iteration number is."""
    measured = [float(value) for r in trace if isinstance(value := r.get("val_bpb"), int | float)]
    for token in _NUMBER.findall(text):
        decimals = len(token.split(".")[1])
        if any(round(value, decimals) == round(float(token), decimals) for value in measured):
            return True
    return False


def critique_defect(critique: dict[str, Any]) -> str | None:
    """Why a well-formed critique is still unusable, or None."""
    scores = [s.get("score") for s in critique.get("scores", []) if isinstance(s, dict)]
    numbers = [s for s in scores if isinstance(s, int | float) and not isinstance(s, bool)]
    if len(numbers) >= 2 and len(set(numbers)) == 1:
        return (f"every candidate has the same score ({numbers[0]:g}): the candidates differ, so score them "
                "differently and select the highest")
    reasons = [str(s.get("reason", "")) for s in critique.get("scores", []) if isinstance(s, dict)]
    return echoed_template(reasons)
