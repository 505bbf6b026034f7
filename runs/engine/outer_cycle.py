"""The outer-cycle boundary: Level 1.5 every K proposals, and Level 2 every M cycles, as steps.

Level 1.5 runs inside the step. Level 2 makes the run wait (see ``level2.py``) and the step
ends without an iteration; the step that resumes the run passes the boundary again, finds the
session finished and every mechanism decided, and goes on with the cycle's first proposal.
"""

from __future__ import annotations

import time
from typing import Any

from ..models import OuterCycle
from ..serializers import outer_cycle_to_dict
from .agents import AgentError, StrategyRequest, build_agent
from .events import publish_run_event
from .level2 import research_due, wait_for_level2
from .step_context import StepContext
from .strategy import freeze_rule


def outer_cycle_boundary(ctx: StepContext) -> str | None:
    """None to go on with a proposal; otherwise the run now waits for Level 2, and why."""
    done = ctx.state.proposals_done
    interval = ctx.experiment.strategy_interval
    if done == 0 or done % interval:
        return None
    cycle_index = done // interval
    if ctx.run.level_strategy and not any(c.index == cycle_index for c in ctx.state.outer_cycles):
        level_one_and_a_half(ctx, cycle_index)
    if research_due(ctx.run, cycle_index):
        return wait_for_level2(ctx.run, ctx.owner, cycle_index)
    return None


def level_one_and_a_half(ctx: StepContext, cycle_index: int) -> None:
    """Level 1.5: freeze what stalled, unfreeze what waited, and let the agent write guidance."""
    view = ctx.state.view()
    history = [
        {
            "after_iteration": c.after_iteration,
            "frozen": c.frozen,
            "newly_frozen": c.newly_frozen,
            "unfrozen": c.unfrozen,
        }
        for c in ctx.state.outer_cycles
    ]
    decision = freeze_rule(view["trace"], view["search_space"], history)
    agent = build_agent(ctx.run)
    reasons: dict[str, Any] = dict(decision.reasons)
    started = time.monotonic()
    try:
        reply = agent.strategize(
            StrategyRequest(
                state={**view, "frozen": decision.frozen},
                rule_summary=decision.summary(),
                per_parameter=decision.per_parameter,
            )
        )
        guidance, strategy, reasons["agent"] = reply.guidance, reply.strategy, reply.reasoning
    except AgentError as error:
        guidance, strategy = ctx.state.guidance, ctx.state.strategy
        reasons["agent_error"] = f"the agent's strategy call failed; guidance unchanged: {error}"
    cycle = OuterCycle.objects.create(
        run=ctx.run,
        index=cycle_index,
        after_iteration=ctx.state.iterations[-1].index,
        frozen=decision.frozen,
        newly_frozen=decision.newly_frozen,
        unfrozen=decision.unfrozen,
        guidance=guidance,
        strategy=strategy,
        reasons=reasons,
    )
    ctx.state.outer_cycles.append(cycle)
    ctx.strategy_seconds = time.monotonic() - started
    publish_run_event(ctx.run_id, {"type": "outer_cycle", "run": ctx.run_id, "cycle": outer_cycle_to_dict(cycle)})
