"""Prompt texts for the LLM agent (Level 1 proposals and Level 1.5 strategy).

The trace is given structured (JSON lines of changes old→new, value, status), not as prose,
so the model can see exactly what was tried.
"""

from __future__ import annotations

import json
from typing import Any

from .base import ProposalRequest, StrategyRequest

PROPOSER_SYSTEM = (
    "You tune the hyperparameters of a small GPT pretraining run to minimise validation bits per byte "
    "(val_bpb, lower is better). Each proposal is trained for a fixed budget and kept only if it beats the best. "
    "Reply with ONE JSON object and nothing else: "
    '{"changes": {"PARAM": value, ...}, "hypothesis": "why this should lower val_bpb"}. '
    "Change one or two parameters. Use only parameters listed as changeable, values inside their ranges, "
    "and never repeat a configuration that was already tried."
)

STRATEGIST_SYSTEM = (
    "You oversee a hyperparameter search. Given its trace and the freeze rule's decisions, write short guidance "
    'for the proposer. Reply with ONE JSON object: {"guidance": "...", "strategy": "explore|exploit|...", '
    '"reasoning": "..."}.'
)


def _knob_line(knob: dict[str, Any], value: Any, allowed: bool, frozen: bool) -> str:
    if knob["choices"] is not None and knob["type"] != "pattern":
        domain = f"one of {knob['choices']}"
    elif knob["type"] == "pattern":
        domain = f"string of {'/'.join(knob['choices'])}, length {knob['min']}..{knob['max']}"
    elif knob["type"] == "tuple":
        domain = f"[a, b] each in ({knob['min']}, {knob['max']})"
    else:
        scale = ", log scale" if knob["log"] else ""
        pow2 = "power of two " if knob["type"] == "pow2" else ""
        domain = f"{pow2}{knob['type']} in [{knob['min']}, {knob['max']}]{scale}"
    mark = "changeable" if allowed else ("LOCKED" if knob["locked"] else ("FROZEN" if frozen else "not now"))
    return f"- {knob['name']} = {json.dumps(value)}  ({mark}; {domain}) — {knob['description']}"


def trace_lines(trace: list[dict[str, Any]]) -> str:
    lines = []
    for record in trace:
        changes = {name: [c["old"], c["new"]] for name, c in record["changes"].items()}
        lines.append(
            json.dumps(
                {
                    "it": record["iteration"],
                    "kind": record["kind"],
                    "changes": changes,
                    "val_bpb": record["val_bpb"],
                    "status": record["status"],
                    "failure": record["failure_class"] or None,
                }
            )
        )
    return "\n".join(lines) or "(no iterations yet)"


def proposal_prompt(request: ProposalRequest) -> str:
    state = request.state
    frozen = set(state["frozen"])
    allowed = set(request.allowed)
    knob_lines = [
        _knob_line(k, state["config"][k["name"]], k["name"] in allowed, k["name"] in frozen)
        for k in state["search_space"]
    ]
    baseline = state["baseline"]
    noise = f" (seed noise sd ≈ {baseline['noise_sd']:.4f})" if baseline.get("noise_sd") else ""
    parts = [
        f"Best val_bpb so far: {state['best']['val_bpb']} at iteration {state['best']['iteration']}; "
        f"baseline {baseline['val_bpb']}{noise}.",
        "Current best configuration and search space:",
        *knob_lines,
        "Trace (one JSON object per iteration; changes are [old, new]):",
        trace_lines(state["trace"]),
    ]
    if state.get("guidance"):
        parts.append(f"Guidance from the strategy layer: {state['guidance']}")
    parts.extend(request.extra_sections)
    if request.rejection:
        parts.append(f"Your previous proposal was refused: {request.rejection}. Propose something else.")
    return "\n".join(parts)


def strategy_prompt(request: StrategyRequest) -> str:
    return "\n".join(
        [
            "Per-parameter statistics (tries, keeps, total improvement of kept changes):",
            json.dumps(request.per_parameter, indent=1),
            f"Freeze rule decisions: {request.rule_summary}",
            "Trace:",
            trace_lines(request.state["trace"]),
        ]
    )
