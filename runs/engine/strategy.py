"""Level 1.5: the freeze/unfreeze rule, run every K proposals.

The paper's rule: freeze a parameter that was proposed at least `freeze_after` times with no
net improvement; unfreeze frozen parameters once the search has moved to a new region (a change
was kept after they were frozen, so the landscape they were judged on is gone). A cap keeps at
least `min_active` parameters changeable. Every decision carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FREEZE_AFTER = 3
MIN_ACTIVE = 4


@dataclass
class RuleDecision:
    frozen: list[str]
    newly_frozen: list[str]
    unfrozen: list[str]
    reasons: dict[str, str] = field(default_factory=dict)
    per_parameter: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.reasons:
            return "no parameter frozen or unfrozen"
        return "; ".join(f"{name}: {reason}" for name, reason in self.reasons.items())


def _per_parameter(trace: list[dict[str, Any]], since: dict[str, int]) -> dict[str, dict[str, Any]]:
    """tries / keeps / improvement per parameter, counting only iterations after `since[name]`."""
    stats: dict[str, dict[str, Any]] = {}
    for record in trace:
        if record["kind"] != "proposal":
            continue
        for name in record["changes"]:
            if record["iteration"] <= since.get(name, -1):
                continue
            entry = stats.setdefault(name, {"tries": 0, "keeps": 0, "improvement": 0.0})
            entry["tries"] += 1
            if record["status"] == "keep":
                entry["keeps"] += 1
                if record.get("best_before") is not None and record["val_bpb"] is not None:
                    entry["improvement"] += record["best_before"] - record["val_bpb"]
    return stats


def freeze_rule(
    trace: list[dict[str, Any]],
    search_space: list[dict[str, Any]],
    history: list[dict[str, Any]],
    *,
    freeze_after: int = FREEZE_AFTER,
    min_active: int = MIN_ACTIVE,
) -> RuleDecision:
    """Decide the frozen set after the trace so far. `history` = earlier cycles (after_iteration, frozen, unfrozen)."""
    frozen_now = list(history[-1]["frozen"]) if history else []
    # When each parameter was last released (unfrozen): tries before that no longer count.
    released_at: dict[str, int] = {}
    frozen_at: dict[str, int] = {}
    for cycle in history:
        for name in cycle["unfrozen"]:
            released_at[name] = cycle["after_iteration"]
        for name in cycle["newly_frozen"]:
            frozen_at[name] = cycle["after_iteration"]
    last_keep = max((r["iteration"] for r in trace if r["status"] == "keep"), default=-1)
    reasons: dict[str, str] = {}

    unfrozen = []
    for name in frozen_now:
        if last_keep > frozen_at.get(name, -1):
            unfrozen.append(name)
            released_at[name] = trace[-1]["iteration"] if trace else 0
            reasons[name] = f"unfrozen: the search moved (a change was kept at iteration {last_keep})"
    frozen = [name for name in frozen_now if name not in unfrozen]

    stats = _per_parameter(trace, released_at)
    changeable = [k["name"] for k in search_space if not k["locked"]]
    candidates = sorted(
        (
            name
            for name, entry in stats.items()
            if name in changeable
            and name not in frozen
            and name not in unfrozen
            and entry["tries"] >= freeze_after
            and entry["improvement"] <= 0
        ),
        key=lambda name: -stats[name]["tries"],
    )
    newly_frozen: list[str] = []
    for name in candidates:
        active = len(changeable) - len(frozen) - len(newly_frozen)
        if active <= min_active:
            reasons[name] = f"would be frozen ({stats[name]['tries']} tries, no gain) but {min_active} must stay active"
            continue
        newly_frozen.append(name)
        reasons[name] = f"frozen: proposed {stats[name]['tries']} times with no net improvement"
    return RuleDecision(
        frozen=sorted(frozen + newly_frozen),
        newly_frozen=newly_frozen,
        unfrozen=unfrozen,
        reasons=reasons,
        per_parameter=stats,
    )
