"""The agent interface shared by the built-in heuristic, the LLM agent and the random control."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol


def keyed_rng(seed: int, iteration: int, purpose: str, agent: str = "") -> random.Random:
    """A random stream of its own for each (run seed, iteration, purpose), never one shared stream.

    So what happens in one iteration (a mechanism that replaced, refused or re-asked a proposal) shifts
    no draw of another, nor of a later ask: a paired replay without a mechanism sees the same
    randomness as its source. The key text is the one these agents always used (the purpose of a
    proposal is its attempt number), so existing runs keep their values.
    """
    return random.Random(f"{agent}{seed}:{iteration}:{purpose}")


def proposal_purpose(attempt: int) -> str:
    """The n-th ask of an iteration draws from its own stream: a refused first ask shifts nothing."""
    return str(attempt)


class AgentError(Exception):
    """The agent could not produce a usable reply (garbage, empty, endpoint down after retries)."""


class AgentUnavailable(AgentError):
    """The endpoint kept failing (refused, timed out, 429/5xx, dropped) through the agent's own retries.

    Re-asking at once would only repeat those retries, so the engine gives up for this iteration.
    """


@dataclass
class ProposalRequest:
    state: dict[str, Any]  # runs.engine.state.RunState.view()
    allowed: list[str]  # parameters that may change now (unlocked, unfrozen, not restricted)
    extra_sections: list[str] = field(default_factory=list)  # from active mechanisms
    rejection: str | None = None  # why the previous attempt was refused (a re-ask)
    previous_changes: Any = None  # the agent's own refused changes, quoted back in the re-ask
    attempt: int = 1
    seed: int = 0


@dataclass
class AgentReply:
    changes: dict[str, Any]  # raw values: validated against the schema by the engine
    hypothesis: str
    raw: str = ""


@dataclass
class StrategyRequest:
    state: dict[str, Any]
    rule_summary: str  # what the Level 1.5 rule decided and why
    per_parameter: dict[str, dict[str, Any]]  # tries/keeps/improvement per parameter


@dataclass
class StrategyReply:
    guidance: str
    strategy: str
    reasoning: str = ""


class CallRecorder(Protocol):
    """Stores one agent call (an LLMCall row). Called for successes and failures alike."""

    def __call__(
        self,
        *,
        level: str,
        purpose: str,
        prompt: str,
        reply: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        latency_seconds: float,
        error: str,
        timeout_seconds: float = 0.0,
    ) -> None: ...


class Agent(Protocol):
    backend: str  # "builtin" | "llm" | "random"
    label: str  # shown wherever the agent appears

    def propose(self, request: ProposalRequest) -> AgentReply: ...

    def strategize(self, request: StrategyRequest) -> StrategyReply: ...
