"""UCB1 bandit over which parameter to change (built-in catalogue mechanism).

From online learning: each tunable parameter is an arm; pulling an arm is a proposal that
changes it; the reward is 1 for a kept change and 0 for a discard or crash. UCB1 balances
exploiting parameters that have paid off against exploring untried ones, so the proposer is
steered away from fixating on one knob. restrict() allows only the TOP_ARMS best arms by upper
confidence bound; prompt_sections() explains why. Deterministic: ties break by schema order.
"""

import math
from typing import Any

TOP_ARMS = 3
EXPLORATION = 1.0


class ParameterBandit:
    def __init__(self) -> None:
        self.pulls: dict[str, int] = {}
        self.rewards: dict[str, float] = {}

    def on_result(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        if record.get("kind") != "proposal":
            return
        reward = 1.0 if record.get("status") == "keep" else 0.0
        for name in record.get("changes", {}):
            self.pulls[name] = self.pulls.get(name, 0) + 1
            self.rewards[name] = self.rewards.get(name, 0.0) + reward

    def arms(self, state: dict[str, Any]) -> list[str]:
        frozen = set(state.get("frozen", []))
        return [p["name"] for p in state.get("search_space", []) if not p.get("locked") and p["name"] not in frozen]

    def scores(self, state: dict[str, Any]) -> list[tuple[float, int, str]]:
        arms = self.arms(state)
        total = sum(self.pulls.get(name, 0) for name in arms)
        scored = []
        for order, name in enumerate(arms):
            pulls = self.pulls.get(name, 0)
            if pulls == 0:
                score = 1e9  # every arm is tried once before any is exploited
            else:
                score = self.rewards.get(name, 0.0) / pulls + EXPLORATION * math.sqrt(2 * math.log(total) / pulls)
            scored.append((score, order, name))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return scored

    def restrict(self, state: dict[str, Any]) -> list[str] | None:
        scored = self.scores(state)
        if len(scored) <= TOP_ARMS:
            return None
        return [name for _, _, name in scored[:TOP_ARMS]]

    def prompt_sections(self, state: dict[str, Any]) -> str | None:
        scored = self.scores(state)
        if len(scored) <= TOP_ARMS:
            return None
        described = []
        for score, _, name in scored[:TOP_ARMS]:
            pulls = self.pulls.get(name, 0)
            if pulls == 0:
                described.append(f"{name} (never tried)")
            else:
                described.append(f"{name} (kept {self.rewards.get(name, 0.0):g} of {pulls}, UCB {score:.2f})")
        return ("Parameter bandit (UCB1 over which knob to change): this iteration change only "
                + ", ".join(described) + ".")
