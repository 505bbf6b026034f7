"""Tabu search over recently tried moves (built-in catalogue mechanism).

From metaheuristics (Glover's tabu search): a short-term memory of recent moves forbids
re-trying them for a fixed tenure, which stops a proposer from cycling between the same few
values. A move is one (parameter, value) pair of a proposal. Rejected here: a move tried in the
last TENURE iterations, and any value that was discarded or crashed for that parameter within
twice the tenure. State is rebuilt from on_result records only.
"""

import json
from typing import Any

TENURE = 8


def move_key(name: str, value: Any) -> str:
    return name + "=" + json.dumps(value, sort_keys=True)


class TabuSearch:
    def __init__(self) -> None:
        # move -> (iteration it was last tried, status it got)
        self.last_tried: dict[str, tuple[int, str]] = {}

    def on_result(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        for name, change in record.get("changes", {}).items():
            self.last_tried[move_key(name, change.get("new"))] = (record["iteration"], record.get("status", ""))

    def tabu_moves(self, iteration: int) -> dict[str, tuple[int, str]]:
        active: dict[str, tuple[int, str]] = {}
        for move, (tried_at, status) in self.last_tried.items():
            age = iteration - tried_at
            if age <= TENURE or (status in ("discard", "crash") and age <= 2 * TENURE):
                active[move] = (tried_at, status)
        return active

    def filter(self, proposal: dict[str, Any], state: dict[str, Any]) -> dict[str, str] | None:
        tabu = self.tabu_moves(state["iteration"])
        for name, value in proposal.get("changes", {}).items():
            move = move_key(name, value)
            if move in tabu:
                tried_at, status = tabu[move]
                return {"reject": f"tabu: {move} was already tried at iteration {tried_at} ({status}); "
                                  "propose a value or parameter not tried recently"}
        return None

    def prompt_sections(self, state: dict[str, Any]) -> str | None:
        tabu = self.tabu_moves(state["iteration"])
        if not tabu:
            return None
        recent = sorted(tabu.items(), key=lambda item: -item[1][0])[:12]
        lines = [f"- {move} (iteration {tried_at}, {status})" for move, (tried_at, status) in recent]
        return "Tabu list (tried recently; proposals repeating these are rejected):\n" + "\n".join(lines)
