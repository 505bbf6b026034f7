"""Level 1: one proposal, from the active mechanisms or the agent, validated before it is trained.

Proposals are typed and range-checked against the search-space schema; values never become
source code. A proposal that is invalid, outside what may change now, already tried, or
rejected by a mechanism's filter is re-asked with the exact reason, up to MAX_PROPOSAL_ATTEMPTS.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mechanisms.text import mechanism_words
from trainer.schema import ConfigError, apply_changes, config_to_json

from ..models import IterationKind, IterationStatus
from .agents import AgentError, AgentUnavailable, ProposalRequest, build_agent
from .mechanism_bridge import RuntimeHandle
from .state import config_key
from .step_context import StepContext

MAX_PROPOSAL_ATTEMPTS = 4


@dataclass
class Proposed:
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    hypothesis: str = ""
    source: str = "agent"
    rejected: list[dict[str, Any]] = field(default_factory=list)
    agent_seconds: float = 0.0
    error: str = ""


def propose(ctx: StepContext, runtime: RuntimeHandle) -> Proposed:
    """Ask the mechanisms and the agent for a typed, range-checked, untried change (re-asking with the reason)."""
    started = time.monotonic()
    view = ctx.state.view()
    frozen = set(ctx.state.frozen)
    changeable = [k["name"] for k in view["search_space"] if not k["locked"] and k["name"] not in frozen]
    restricted = runtime.restrict(view, changeable) if not ctx.run.random_control else None
    allowed = sorted(restricted) if restricted is not None else changeable
    sections = runtime.prompt_sections(view) if not ctx.run.random_control else []
    agent = build_agent(ctx.run)
    tried = ctx.state.tried_config_keys()
    proposed = Proposed()
    rejection: str | None = None
    for attempt in range(1, MAX_PROPOSAL_ATTEMPTS + 1):
        source = "random" if ctx.run.random_control else "agent"
        replacement, by = (None, None) if ctx.run.random_control else runtime.propose(view)
        try:
            if replacement is not None:
                changes, hypothesis, source = (
                    replacement["changes"],
                    replacement.get("hypothesis", ""),
                    f"mechanism:{by}",
                )
            else:
                reply = agent.propose(
                    ProposalRequest(
                        state=view,
                        allowed=allowed,
                        extra_sections=sections,
                        rejection=rejection,
                        previous_changes=proposed.rejected[-1].get("changes") if proposed.rejected else None,
                        attempt=attempt,
                        seed=ctx.run.seed,
                    )
                )
                changes, hypothesis = reply.changes, reply.hypothesis
        except AgentError as error:
            rejection = str(error)
            proposed.rejected.append({"attempt": attempt, "source": source, "reason": rejection})
            if isinstance(error, AgentUnavailable):
                # Its own retries are spent: re-asking would multiply them (and their timeouts).
                proposed.error = f"the agent's endpoint is unavailable; not asked again this iteration: {error}"
                break
            continue
        rejected_by: str | None = None  # the mechanism whose filter refused it
        problem = check_changes(ctx, changes, allowed, frozen, tried)
        if problem is None:
            config, diff = apply_changes(view["config"], changes, frozen=frozen, preset=ctx.state.preset)
            candidate = {
                "changes": config_to_json({k: v["new"] for k, v in diff.items()}),
                "hypothesis": hypothesis,
            }
            accepted, reason, by_filter = (
                (True, None, None) if ctx.run.random_control else runtime.filter(candidate, view)
            )
            if accepted:
                proposed.changes = {k: config_to_json(v) for k, v in diff.items()}
                proposed.config = config_to_json(config)
                proposed.hypothesis = hypothesis
                proposed.source = source
                break
            # The reason is the filter's own string: shown quoted, never as the system's words.
            problem, rejected_by = f"rejected by mechanism {by_filter}; {mechanism_words(reason or '')}", by_filter
        rejection = problem
        attempt_record = {"attempt": attempt, "source": source, "changes": jsonable(changes), "reason": problem}
        if rejected_by is not None:
            attempt_record["mechanism"] = rejected_by  # blocking_filter counts on it
        proposed.rejected.append(attempt_record)
    else:
        proposed.error = f"no valid proposal after {MAX_PROPOSAL_ATTEMPTS} attempts; last: {rejection}"
        blocker = blocking_filter(ctx, proposed.rejected)
        if blocker is not None:
            # The run would otherwise spend every remaining iteration on refused asks.
            runtime.deactivate(blocker, "filter", f"it rejected every proposal of {BLOCKED_ITERATIONS} iterations "
                                                  "in a row: it blocks the search")
    proposed.agent_seconds = time.monotonic() - started
    return proposed


BLOCKED_ITERATIONS = 2


def _rejecting_mechanisms(attempts: list[dict[str, Any]]) -> set[str | None]:
    return {a.get("mechanism") for a in attempts}


def blocking_filter(ctx: StepContext, rejected: list[dict[str, Any]]) -> str | None:
    """The mechanism whose filter rejected every ask of this iteration and of the run's previous proposal.

    The ladder refuses a filter that rejects most recorded proposals; one can still meet a run it blocks.
    One fully rejected iteration can be chance (a filter rejecting half the proposals does it 1 time in 16);
    two in a row by the same mechanism are not worth a third.
    """
    names = _rejecting_mechanisms(rejected)
    if len(rejected) < MAX_PROPOSAL_ATTEMPTS or len(names) != 1 or None in names:
        return None
    previous = ctx.run.iteration_set.filter(kind=IterationKind.PROPOSAL).order_by("-index").first()
    if previous is None or previous.status != IterationStatus.INVALID_PROPOSAL:
        return None
    attempts = previous.rejected_attempts if isinstance(previous.rejected_attempts, list) else []
    if len(attempts) < MAX_PROPOSAL_ATTEMPTS or _rejecting_mechanisms(attempts) != names:
        return None
    return names.pop()


def check_changes(ctx: StepContext, changes: Any, allowed: list[str], frozen: set[str], tried: set[str]) -> str | None:
    """Why a proposed change cannot be tried, or None."""
    if not isinstance(changes, dict) or not changes:
        return "a proposal must name at least one parameter to change"
    outside = sorted(
        name for name in changes if isinstance(name, str) and name not in allowed and name not in frozen
    )
    try:
        config, _ = apply_changes(ctx.state.best_config, changes, frozen=frozen, preset=ctx.state.preset)
    except ConfigError as error:
        return str(error)
    if outside:
        return f"only these parameters may change now: {', '.join(allowed)} (got {', '.join(outside)})"
    if config_key(config) in tried:
        return "this configuration was already evaluated; propose a change not tried before"
    return None


def jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:500]
