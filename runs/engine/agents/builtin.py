"""The built-in heuristic agent: the embedded default, with no LLM and no network.

How it proposes (each ask draws from its own stream keyed by the run's seed, the iteration and the
attempt, so a run is reproducible and a paired replay without a mechanism draws the same):

1. Score every parameter it may change by how it did so far: (keeps + 1) / (tries + 2), plus an
   exploration bonus 1 / sqrt(tries + 1) so untried parameters get their turn.
2. Sample one parameter in proportion to its score; with probability 1/4 add a second one.
3. Pick a value: numbers move one step (×2 or ÷2 for powers of two, ×1.5 or ÷1.5 on log-scaled
   knobs, ±10% of the range otherwise), continuing in the direction of its last kept change,
   or reversing after a discarded one; patterns and tuples pick an untried variant.
4. Skip candidates whose resulting config was already evaluated (up to 40 draws).

At Level 1.5 it writes guidance from the trace's per-parameter statistics. It is labelled
mechanisms.labels.BUILTIN_LABEL everywhere it appears.
"""

from __future__ import annotations

import math
import random
from typing import Any

from mechanisms.labels import BUILTIN_LABEL
from trainer.schema import DEFAULT_PRESET, ConfigError, apply_changes

from ..state import config_key
from .base import AgentError, AgentReply, ProposalRequest, StrategyReply, StrategyRequest, keyed_rng, proposal_purpose

PATTERN_VARIANTS = ("SSSL", "SSLL", "SLSL", "SSSS", "LLLL", "SL", "L", "S", "SSL", "SLLL")
BETA_VARIANTS = ((0.8, 0.95), (0.9, 0.95), (0.9, 0.99), (0.85, 0.98), (0.7, 0.95), (0.9, 0.999))
EXTRA_CHANGE_PROBABILITY = 0.25
MAX_DRAWS = 40


def parameter_stats(trace: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per parameter: tries, keeps, total improvement of its kept changes, last direction and outcome."""
    stats: dict[str, dict[str, Any]] = {}
    for record in trace:
        if record["kind"] != "proposal":
            continue
        for name, change in record["changes"].items():
            entry = stats.setdefault(name, {"tries": 0, "keeps": 0, "improvement": 0.0, "last": None})
            entry["tries"] += 1
            kept = record["status"] == "keep"
            entry["keeps"] += kept
            if kept and record.get("best_before") is not None and record["val_bpb"] is not None:
                entry["improvement"] += record["best_before"] - record["val_bpb"]
            entry["last"] = {"old": change["old"], "new": change["new"], "kept": kept}
    return stats


def _direction(change: dict[str, Any]) -> int:
    old, new = change["old"], change["new"]
    if isinstance(old, int | float) and isinstance(new, int | float):
        return 1 if new > old else -1
    return 0


def _step_number(knob: dict[str, Any], value: float, direction: int) -> float:
    lo, hi = knob["min"], knob["max"]
    if knob["type"] == "pow2":
        candidate = value * 2 if direction > 0 else value / 2
    elif knob["log"]:
        candidate = value * 1.5 if direction > 0 else value / 1.5
    else:
        candidate = value + direction * 0.1 * (hi - lo)
    candidate = min(max(candidate, lo), hi)
    if knob["type"] in ("int", "pow2"):
        return round(candidate)
    return float(f"{candidate:.4g}")


class BuiltinAgent:
    backend = "builtin"
    label = BUILTIN_LABEL

    def _value_for(self, knob: dict[str, Any], current: Any, last: dict[str, Any] | None, rng: random.Random) -> Any:
        if knob["type"] == "pattern":
            return rng.choice([p for p in PATTERN_VARIANTS if p != current])
        if knob["type"] == "tuple":
            return list(rng.choice([b for b in BETA_VARIANTS if list(b) != list(current)]))
        if knob["type"] == "enum":
            return rng.choice([c for c in knob["choices"] if c != current])
        direction = rng.choice((-1, 1))
        if last is not None and _direction(last) and rng.random() < 0.75:
            direction = _direction(last) if last["kept"] else -_direction(last)
        return _step_number(knob, current, direction)

    def propose(self, request: ProposalRequest) -> AgentReply:
        state = request.state
        if not request.allowed:
            raise AgentError("no parameter may change now (all locked, frozen or restricted)")
        rng = keyed_rng(request.seed, state["iteration"], proposal_purpose(request.attempt))
        knobs = {k["name"]: k for k in state["search_space"]}
        stats = parameter_stats(state["trace"])
        tried = {config_key(r["config"]) for r in state["trace"] if r.get("config")}
        weights = []
        for name in request.allowed:
            entry = stats.get(name, {"tries": 0, "keeps": 0})
            weights.append((entry["keeps"] + 1) / (entry["tries"] + 2) + 1 / math.sqrt(entry["tries"] + 1))
        config = state["config"]
        for _ in range(MAX_DRAWS):
            names = [rng.choices(request.allowed, weights)[0]]
            if len(request.allowed) > 1 and rng.random() < EXTRA_CHANGE_PROBABILITY:
                names.append(rng.choice([n for n in request.allowed if n != names[0]]))
            changes = {
                name: self._value_for(knobs[name], config[name], stats.get(name, {}).get("last"), rng) for name in names
            }
            try:
                new_config, diff = apply_changes(
                    config, changes, frozen=state["frozen"], preset=state.get("preset", DEFAULT_PRESET)
                )
            except ConfigError:
                continue
            if config_key(new_config) in tried:
                continue
            return AgentReply(changes=changes, hypothesis=self._hypothesis(diff, stats), raw="")
        raise AgentError(f"no untried valid change found in {MAX_DRAWS} draws")

    def _hypothesis(self, diff: dict[str, dict[str, Any]], stats: dict[str, dict[str, Any]]) -> str:
        parts = []
        for name, change in diff.items():
            entry = stats.get(name)
            if entry is None:
                why = "not tried yet; probing its effect"
            elif entry["last"] and entry["last"]["kept"]:
                why = f"its last change was kept ({entry['keeps']}/{entry['tries']} kept); continuing that way"
            else:
                why = f"{entry['keeps']}/{entry['tries']} changes kept so far; trying another value"
            parts.append(f"{name} {_short(change['old'])}→{_short(change['new'])}: {why}")
        return "; ".join(parts) + "."

    def strategize(self, request: StrategyRequest) -> StrategyReply:
        ranked = sorted(request.per_parameter.items(), key=lambda item: (-item[1]["keeps"], item[1]["tries"]))
        helpful = [name for name, entry in ranked if entry["keeps"] > 0][:3]
        untried = [
            k["name"]
            for k in request.state["search_space"]
            if not k["locked"] and k["name"] not in request.per_parameter and k["name"] not in request.state["frozen"]
        ]
        if helpful:
            guidance = f"Gains so far came from {', '.join(helpful)}; refine them in small steps."
            strategy = "exploit"
        else:
            guidance = "No change has been kept yet; take larger steps on parameters not yet tried."
            strategy = "explore"
        if untried:
            guidance += f" Not tried yet: {', '.join(untried[:5])}."
        return StrategyReply(guidance=guidance, strategy=strategy, reasoning=request.rule_summary)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
