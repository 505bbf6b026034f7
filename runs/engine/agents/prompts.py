"""Prompt texts for the LLM agent (Level 1 proposals and Level 1.5 strategy), written for small models.

Measured against a 1.5B instruct model, three things decided whether its replies were usable:
- History is shown as a compact table with "old → new" cells, never as JSON: a model copies any JSON
  it sees, so a trace of {"P": [old, new]} objects came back as proposals of [old, new] lists and as
  invented trace lines with a val_bpb and a status.
- The reply's shape is shown exactly once, last, with a concrete example built from a parameter the
  model may change, and the reply is constrained by a JSON schema where the endpoint supports one.
- A re-ask quotes the defect, what was sent, and the corrected object, and says to keep the idea: a
  re-ask that says "propose something else" makes the model change the value instead of the format.

Every prompt is measured (context_budget.estimate_tokens) and the history is cut to fit the window.
"""

from __future__ import annotations

import json
from typing import Any

from mechanisms.context_budget import BYTES_PER_TOKEN, DEFAULT_CONTEXT_TOKENS, fit_rows, prompt_tokens

from .base import ProposalRequest, StrategyRequest

PROPOSER_SYSTEM = (
    "You tune the hyperparameters of a small GPT pretraining run to lower its validation bits per byte "
    "(val_bpb; lower is better). Each proposal is trained once and kept only if it beats the best so far. "
    "You answer with one JSON object only."
)

STRATEGIST_SYSTEM = (
    "You oversee a hyperparameter search and write short, concrete guidance for the proposer, based only on "
    "what the history shows. You answer with one JSON object only."
)

# Tokens kept free for the reply: a proposal is one short object, strategy guidance a paragraph.
PROPOSAL_REPLY_TOKENS = 512
STRATEGY_REPLY_TOKENS = 768
SECTIONS_BUDGET_TOKENS = 1200  # all mechanisms' prompt sections together

STATUS_TEXT = {
    "baseline": "baseline",
    "keep": "KEPT (new best)",
    "discard": "discarded (not better; not applied)",
    "crash": "crashed (not applied)",
    "invalid_proposal": "invalid proposal (not trained)",
}


# -- values and parameters -----------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _domain(knob: dict[str, Any]) -> str:
    if knob["type"] == "pattern":
        letters = " and ".join(knob["choices"])
        return f'a string of the letters {letters}, {knob["min"]} to {knob["max"]} long, e.g. "SSLL"'
    if knob["choices"] is not None:
        return "one of " + ", ".join(json.dumps(c) for c in knob["choices"])
    if knob["type"] == "tuple":
        return f"a list of two numbers [a, b], each strictly between {knob['min']:g} and {knob['max']:g}"
    if knob["type"] == "pow2":
        return f"a power of two from {knob['min']} to {knob['max']}"
    kind = "an integer" if knob["type"] == "int" else "a number"
    scale = " (log scale: try factors like x2 or x0.5)" if knob["log"] else ""
    return f"{kind} from {knob['min']:g} to {knob['max']:g}{scale}"


def example_value(knob: dict[str, Any], current: Any) -> Any:
    """A valid value different from `current`, for showing the reply's shape with a real parameter."""
    kind = knob["type"]
    if kind == "pattern":
        flipped = {"S": "L", "L": "S"}
        text = str(current)
        return text[:-1] + flipped.get(text[-1:], knob["choices"][0]) if text else knob["choices"][0]
    if knob["choices"] is not None:
        return next((c for c in knob["choices"] if c != current), knob["choices"][0])
    if kind == "tuple":
        first, second = [*list(current), 0.9, 0.95][:2]
        return [round(min(0.95, first + 0.05), 3) if first < 0.9 else round(first - 0.05, 3), second]
    if kind == "pow2":
        return int(current * 2) if current * 2 <= knob["max"] else int(current // 2)
    if kind == "int":
        return current + 1 if current + 1 <= knob["max"] else current - 1
    number = float(current)
    if knob["log"] and number > 0:
        candidate = number * 2 if number * 2 <= knob["max"] else number / 2
    else:
        step = (knob["max"] - knob["min"]) / 10
        candidate = number + step if number + step <= knob["max"] else number - step
    return float(f"{candidate:.3g}")


def _example_knob(search_space: list[dict[str, Any]], allowed: list[str], turn: int) -> dict[str, Any] | None:
    changeable = [k for k in search_space if k["name"] in allowed]
    numeric = [k for k in changeable if k["type"] == "float"] or changeable
    return numeric[turn % len(numeric)] if numeric else None


def reply_example(state: dict[str, Any], allowed: list[str], changes: dict[str, Any] | None = None,
                  turn: int = 0) -> str:
    """The reply's shape with a real parameter. The parameter turns with the iteration and the ask: a small
    model copies the example, and one fixed example became the same duplicate proposal again and again."""
    if changes is None:
        knob = _example_knob(state["search_space"], allowed, turn)
        changes = {knob["name"]: example_value(knob, state["config"][knob["name"]])} if knob else {}
    return json.dumps({"changes": changes, "hypothesis": "one sentence: why this lowers val_bpb"})


def proposal_schema(search_space: list[dict[str, Any]], allowed: list[str]) -> dict[str, Any]:
    """A JSON schema of the reply, for endpoints that constrain decoding to it (response_format json_schema).

    Only types are constrained (ranges are checked by the engine, which quotes the exact defect): a
    grammar cannot make a value wrong in shape, which is what small models got wrong most.
    """
    properties: dict[str, Any] = {}
    for knob in search_space:
        if knob["name"] not in allowed:
            continue
        if knob["type"] == "pattern":
            letters = "".join(knob["choices"])
            schema: dict[str, Any] = {"type": "string", "pattern": f"^[{letters}]{{{knob['min']},{knob['max']}}}$"}
        elif knob["choices"] is not None:
            schema = {"enum": list(knob["choices"])}
        elif knob["type"] == "tuple":
            schema = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
        elif knob["type"] in ("int", "pow2"):
            schema = {"type": "integer"}
        else:
            schema = {"type": "number"}
        properties[knob["name"]] = schema
    return {
        "type": "object",
        "properties": {
            "changes": {"type": "object", "properties": properties, "additionalProperties": False, "minProperties": 1},
            "hypothesis": {"type": "string"},
        },
        "required": ["changes", "hypothesis"],
        "additionalProperties": False,
    }


def corrected_changes(previous: Any, search_space: list[dict[str, Any]], allowed: list[str]) -> dict[str, Any] | None:
    """The refused changes in the reply's shape, when the defect was one of shape: [old, new] pairs or
    {"old", "new"} objects become the new value, parameters that may not change are dropped.

    Shown to the model in the re-ask, never applied: the model confirms its own value.
    """
    if not isinstance(previous, dict):
        return None
    knobs = {k["name"]: k for k in search_space}
    fixed: dict[str, Any] = {}
    for name, value in previous.items():
        knob = knobs.get(name)
        if knob is None or name not in allowed:
            continue
        if isinstance(value, dict) and "new" in value:
            value = value["new"]
        if knob["type"] == "tuple":
            if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
                value = value[-1]
        elif knob["type"] == "pattern" and isinstance(value, list):
            if value and all(isinstance(v, str) and len(v) == 1 for v in value):
                value = "".join(value)
            elif value:
                value = value[-1]
        elif isinstance(value, list) and value:
            value = value[-1]
        fixed[name] = value
    return fixed or None


# -- the history table ------------------------------------------------------------------------


def _change_cell(record: dict[str, Any]) -> str:
    if record["kind"] == "baseline":
        return "(baseline config)"
    if record["kind"] == "baseline_repeat":
        return "(baseline config, another seed)"
    changes = record.get("changes") or {}
    if not changes:
        return "(nothing valid)"
    cells = []
    for name, change in changes.items():
        if isinstance(change, dict) and "new" in change:
            cells.append(f"{name} {_fmt(change.get('old'))} → {_fmt(change['new'])}")
        else:
            cells.append(f"{name} → {_fmt(change)}")
    prefix = "re-check of " if record["kind"] == "reevaluation" else ""
    return prefix + ", ".join(cells)


def _result_cell(record: dict[str, Any]) -> str:
    text = STATUS_TEXT.get(record["status"], str(record["status"]))
    if record["status"] == "crash" and record.get("failure_class"):
        text = f"crashed: {record['failure_class']} (not applied)"
    return text


def history_rows(trace: list[dict[str, Any]]) -> list[str]:
    rows = []
    for record in trace:
        value = record.get("val_bpb")
        shown = f"{value:.4f}" if isinstance(value, int | float) else "-"
        rows.append(f"{record['iteration']} | {_change_cell(record)} | {shown} | {_result_cell(record)}")
    return rows


HISTORY_HEADER = ["iteration | change (old → new) | val_bpb | result"]


def history_table(trace: list[dict[str, Any]], budget_tokens: int) -> str:
    if not trace:
        return "(no iterations yet)"
    return "\n".join(fit_rows(HISTORY_HEADER, history_rows(trace), budget_tokens))


def _with_history(
    head: list[str], tail: list[str], trace: list[dict[str, Any]], system: str, reply_tokens: int, context_tokens: int
) -> str:
    """head, the history table cut to what the window leaves after everything else, then tail."""
    fixed_text = "\n".join([*head, "", "History, oldest first:", *tail])
    room = context_tokens - reply_tokens - prompt_tokens(system, fixed_text)
    history = history_table(trace, max(200, room))
    return "\n".join([*head, "", "History, oldest first:", history, *tail])


# -- Level 1 ----------------------------------------------------------------------------------


def _best_line(state: dict[str, Any]) -> str:
    best, baseline = state["best"], state["baseline"]
    best_value = f"{best['val_bpb']:.4f}" if best.get("val_bpb") is not None else "not measured yet"
    where = f" (iteration {best['iteration']})" if best.get("iteration") is not None else ""
    base = f"{baseline['val_bpb']:.4f}" if baseline.get("val_bpb") is not None else "not measured yet"
    noise = f"; differences below {2 * baseline['noise_sd']:.4f} are seed noise" if baseline.get("noise_sd") else ""
    return f"Best val_bpb so far: {best_value}{where}. Baseline: {base}{noise}."


def _parameter_lines(state: dict[str, Any], allowed: list[str]) -> tuple[list[str], str]:
    frozen = set(state["frozen"])
    lines, fixed = [], []
    for knob in state["search_space"]:
        value = state["config"][knob["name"]]
        if knob["name"] in allowed:
            lines.append(f"- {knob['name']} = {_fmt(value)}: {_domain(knob)}. {knob['description']}")
        else:
            why = "locked" if knob["locked"] else ("frozen" if knob["name"] in frozen else "not now")
            fixed.append(f"{knob['name']}={_fmt(value)} ({why})")
    return lines, ", ".join(fixed)


def _fit_sections(sections: list[str]) -> list[str]:
    """Mechanisms' prompt sections, cut to a share of the window (the protocol allows 8 × 4000 characters)."""
    room, fitted = SECTIONS_BUDGET_TOKENS * BYTES_PER_TOKEN, []
    for section in sections:
        data = section.encode()
        if len(data) > room:
            section = data[: max(0, room)].decode(errors="ignore") + " ... (cut to fit the context window)"
        fitted.append(section)
        room -= len(data)
        if room <= 0:
            break
    return fitted


def _reask_lines(request: ProposalRequest) -> list[str]:
    if not request.rejection:
        return []
    state = request.state
    lines = ["", "YOUR PREVIOUS REPLY WAS REFUSED.", f"Defect: {request.rejection}"]
    if request.previous_changes is not None:
        lines.append(f'You sent: {{"changes": {json.dumps(request.previous_changes)}}}')
    if "already evaluated" in request.rejection:
        lines.append("That configuration is already in the history. Choose a value that no row shows.")
        return lines
    fixed = corrected_changes(request.previous_changes, state["search_space"], request.allowed)
    if fixed is not None:
        # A value of the right shape that the defect names (out of range, say) would only be copied back:
        # show a valid value of that parameter instead.
        knobs = {k["name"]: k for k in state["search_space"]}
        previous = request.previous_changes if isinstance(request.previous_changes, dict) else {}
        for name, value in fixed.items():
            if name in request.rejection and value == previous.get(name):
                fixed[name] = example_value(knobs[name], state["config"][name])
    lines.append(f"Corrected shape: {reply_example(state, request.allowed, fixed, turn=state.get('iteration', 0))}")
    lines.append("Keep your idea; fix only what the defect names, and reply with the corrected object.")
    return lines


def proposal_prompt(request: ProposalRequest, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> str:
    state = request.state
    parameters, fixed = _parameter_lines(state, request.allowed)
    head = [
        _best_line(state),
        "",
        "Parameters you may change (current best value: allowed values. meaning):",
        *parameters,
    ]
    if fixed:
        head.append(f"Do not change: {fixed}.")
    if state.get("guidance"):
        head += ["", f"Guidance from the strategy layer: {state['guidance']}"]
    head += [f"\n{section}" for section in _fit_sections(request.extra_sections)]
    tail = [
        "",
        "Reply with ONE JSON object and nothing else, in exactly this shape:",
        reply_example(state, request.allowed, turn=state.get("iteration", 0) + request.attempt - 1),
        'In "changes" give each parameter its NEW value only (a number, a string, or for a list parameter '
        "one list), never the old value. Change one or two parameters to a configuration not in the history.",
        *_reask_lines(request),
    ]
    return _with_history(head, tail, state["trace"], PROPOSER_SYSTEM, PROPOSAL_REPLY_TOKENS, context_tokens)


# -- Level 1.5 --------------------------------------------------------------------------------


def strategy_prompt(request: StrategyRequest, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> str:
    stats = ["parameter | tries | kept | total improvement of kept changes"]
    for name, row in sorted(request.per_parameter.items()):
        improvement = row.get("improvement", 0.0) or 0.0
        stats.append(f"{name} | {row.get('tries', 0)} | {row.get('keeps', 0)} | {improvement:.4f}")
    state = request.state
    head = [
        _best_line(state),
        "",
        "Per-parameter statistics:",
        *stats,
        "",
        f"Freeze rule decisions: {request.rule_summary}",
    ]
    tail = [
        "",
        'Only rows marked "KEPT" improved the best; every other change was not applied. Write guidance the '
        "proposer can act on next: name parameters and values or directions, and say which to leave alone, "
        "citing iterations from the history. Do not invent results.",
        "",
        "Reply with ONE JSON object and nothing else, in exactly this shape:",
        '{"guidance": "two or three sentences naming parameters and values", '
        '"strategy": "explore or exploit", "reasoning": "one sentence citing iterations"}',
    ]
    return _with_history(head, tail, state["trace"], STRATEGIST_SYSTEM, STRATEGY_REPLY_TOKENS, context_tokens)
