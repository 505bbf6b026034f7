"""Coordinate exploration against fixation (built-in catalogue mechanism).

From derivative-free optimisation (coordinate search / orthogonal directions): when the last
WINDOW proposals changed at most one distinct parameter, the search is probing a single
direction. propose() then takes one step along the least-tested coordinate instead of asking
the proposer again: x2 or /2 for log-scaled numbers, a tenth of the range for linear ones, +1
for integers, the next untried choice for categorical knobs. The step direction alternates with
how often that coordinate has been tried, and stays inside the schema's bounds.
"""

from typing import Any

WINDOW = 5


def step(param: dict[str, Any], current: Any, tried: int) -> Any:
    upward = tried % 2 == 0
    choices = param.get("choices")
    if choices:
        index = choices.index(current) if current in choices else 0
        return choices[(index + (1 if upward else -1)) % len(choices)]
    low, high = param.get("min"), param.get("max")
    if param.get("log") and isinstance(current, (int, float)) and current > 0:
        value: Any = current * 2 if upward else current / 2
    elif param.get("type") == "int":
        value = current + (1 if upward else -1)
    elif low is not None and high is not None:
        value = current + (high - low) / 10 * (1 if upward else -1)
    else:
        value = current * 1.5 if upward else current / 1.5
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    if param.get("type") == "int":
        value = round(value)
    elif isinstance(value, float):
        value = round(value, 6)
    return value


class CoordinateExploration:
    def __init__(self) -> None:
        self.recent: list[list[str]] = []
        self.tries: dict[str, int] = {}

    def on_result(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        changed = sorted(record.get("changes", {}))
        if record.get("kind") != "proposal" or not changed:
            return
        self.recent = [*self.recent, changed][-WINDOW:]
        for name in changed:
            self.tries[name] = self.tries.get(name, 0) + 1

    def fixated_on(self) -> str | None:
        if len(self.recent) < WINDOW:
            return None
        touched = {name for changed in self.recent for name in changed}
        return sorted(touched)[0] if len(touched) == 1 else None

    def propose(self, state: dict[str, Any]) -> dict[str, Any] | None:
        fixation = self.fixated_on()
        if fixation is None:
            return None
        frozen = set(state.get("frozen", []))
        candidates = [p for p in state.get("search_space", [])
                      if not p.get("locked") and p["name"] not in frozen and p["name"] != fixation]
        if not candidates:
            return None
        least = min(candidates, key=lambda p: self.tries.get(p["name"], 0))
        name = least["name"]
        current = state.get("config", {}).get(name, least.get("default"))
        if current is None:
            return None
        value = step(least, current, self.tries.get(name, 0))
        if value == current:
            value = step(least, current, self.tries.get(name, 0) + 1)
        if value == current:
            return None
        return {"changes": {name: value},
                "hypothesis": f"Coordinate exploration: the last {WINDOW} proposals all changed {fixation}; "
                              f"probe the least-tested coordinate {name} ({current} -> {value}) instead."}
