"""Group R's proposer: uniform random changes from the search space, with no history.

It answers "does the loop beat chance?" with the same number of evaluations as the other groups.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .base import AgentError, AgentReply, ProposalRequest, StrategyReply, StrategyRequest, keyed_rng, proposal_purpose
from .builtin import BETA_VARIANTS, PATTERN_VARIANTS

RANDOM_LABEL = "random control (no history)"


def random_value(knob: dict[str, Any], rng: random.Random) -> Any:
    lo, hi = knob["min"], knob["max"]
    kind = knob["type"]
    if kind == "pattern":
        return rng.choice(PATTERN_VARIANTS)
    if kind == "tuple":
        return list(rng.choice(BETA_VARIANTS))
    if kind == "enum":
        return rng.choice(knob["choices"])
    if kind == "pow2":
        return 2 ** rng.randint(int(math.log2(lo)), int(math.log2(hi)))
    if kind == "int":
        return rng.randint(int(lo), int(hi))
    if knob["log"] and lo > 0:
        return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
    return float(f"{rng.uniform(lo, hi):.4g}")


class RandomAgent:
    backend = "random"
    label = RANDOM_LABEL

    def propose(self, request: ProposalRequest) -> AgentReply:
        if not request.allowed:
            raise AgentError("no parameter may change")
        rng = keyed_rng(request.seed, request.state["iteration"], proposal_purpose(request.attempt), agent="random:")
        knobs = {k["name"]: k for k in request.state["search_space"]}
        names = rng.sample(request.allowed, k=min(len(request.allowed), rng.choice((1, 2))))
        changes = {name: random_value(knobs[name], rng) for name in names}
        return AgentReply(changes=changes, hypothesis="random control: values drawn uniformly, no history used")

    def strategize(self, request: StrategyRequest) -> StrategyReply:
        return StrategyReply(guidance="", strategy="random", reasoning="the random control takes no guidance")
