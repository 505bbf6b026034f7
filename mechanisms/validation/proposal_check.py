"""Would the engine take this proposal? The check the dry run applies to a mechanism's proposals.

The engine validates every proposal (an agent's or a mechanism's) with ``trainer.schema.apply_changes``
and the parameters allowed this iteration; a mechanism whose proposals the engine would refuse
changes no decision. The dry run only has the state a mechanism is shown, so this module applies
the same rules to that state's search-space description: each entry becomes a ``trainer.schema.Knob``
and goes through the trainer's own coercion, so types, bounds and choices mean exactly what they
mean at run time. A test keeps it in step with ``apply_changes`` on the real schema.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from mechanisms.protocol import SearchParam, State
from trainer.schema import KNOBS, ConfigError, Knob, coerce_knob, cross_field_problems

# The preset a description's bounds are stored under in a Knob built from it (any preset would do).
_PRESET = "cpu-tiny"


def knob_of(param: SearchParam) -> Knob:
    """The trainer knob a search-space entry describes; raises ConfigError if it is incomplete."""
    name, kind = str(param.get("name")), str(param.get("type"))
    choices = param.get("choices")
    default = param.get("default")
    needs = {"pow2": ("min", "max"), "tuple": ("min", "max"), "pattern": ("min", "max", "choices"),
             "enum": ("choices",)}.get(kind, ())
    missing = [key for key in needs if param.get(key) is None]
    if kind == "tuple" and not isinstance(default, list):
        missing.append("default (a list, which gives the length)")
    if missing:
        raise ConfigError(f"the search space describes {name} without {', '.join(missing)}")
    return Knob(name=name, type=kind, description=str(param.get("description", "")),
                defaults={_PRESET: default}, min=param.get("min"), max=param.get("max"),
                choices=tuple(choices) if isinstance(choices, list) else None, log=bool(param.get("log")),
                locked=bool(param.get("locked")), length=len(default) if isinstance(default, list) else None)


def unchangeable(name: Any, state: State) -> str | None:
    """Why parameter ``name`` cannot change at all in ``state`` (unknown, locked, frozen), or None."""
    param = next((p for p in state["search_space"] if p.get("name") == name), None)
    if param is None:
        return f"{name} is not in the search space"
    if param.get("locked"):
        return f"{name} is locked"
    if name in state.get("frozen", []):
        return f"{name} is frozen by the strategy level"
    return None


def tunable(state: State) -> set[str]:
    return {str(p["name"]) for p in state["search_space"] if unchangeable(p["name"], state) is None}


def proposal_problems(changes: Any, state: State, allowed: Collection[str] | None = None) -> list[str]:
    """Why the engine would refuse ``changes`` against ``state``; empty when it would take them.

    ``allowed`` is the set a restriction narrowed this iteration to (None: every tunable parameter).
    """
    if not isinstance(changes, Mapping) or not changes:
        return ["a proposal must change at least one parameter"]
    params = {p.get("name"): p for p in state["search_space"]}
    config = state.get("config", {})
    problems: list[str] = []
    incumbent: dict[str, Any] = {}  # typed, as the engine holds it
    broken: dict[str, str] = {}
    for name, param in params.items():
        if name in config:
            try:
                incumbent[str(name)] = coerce_knob(knob_of(param), config[name], preset=_PRESET)
            except ConfigError as error:
                broken[str(name)] = str(error)
    updated = dict(incumbent)
    for name, raw in changes.items():
        if (reason := unchangeable(name, state)) is not None:
            problems.append(reason)
            continue
        if allowed is not None and name not in allowed:
            problems.append(f"{name} is outside this iteration's restriction to {', '.join(sorted(allowed))}")
            continue
        try:
            value = coerce_knob(knob_of(params[name]), raw, preset=_PRESET)
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        if name in broken:
            problems.append(f"the incumbent's {name} is invalid: {broken[name]}")
        elif name in incumbent and value == incumbent[name]:
            problems.append(f"{name} is already {format_value(incumbent[name])}; the change would do nothing")
        else:
            updated[name] = value
    # Relations between knobs are the trainer's; they apply when the state describes its full config.
    if not problems and set(KNOBS) <= set(updated):
        problems.extend(cross_field_problems(updated))
    return problems


def format_value(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def describe_changes(changes: Any, config: Mapping[str, Any]) -> str:
    """``DEPTH 4→5, MATRIX_LR 0.09→0.18``: each change from the incumbent's value."""
    if not isinstance(changes, Mapping) or not changes:
        return "no change"
    return ", ".join(f"{name} {format_value(config.get(name))}→{format_value(value)}"
                     for name, value in changes.items())
