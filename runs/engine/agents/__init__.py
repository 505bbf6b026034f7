"""Who proposes: the built-in heuristic agent, an OpenAI-compatible LLM, or the random control.

All agents sit behind one interface (`base.Agent`); `build_agent` picks one for a run.
"""

from __future__ import annotations

from .base import (
    Agent,
    AgentError,
    AgentReply,
    AgentUnavailable,
    CallRecorder,
    ProposalRequest,
    StrategyReply,
    StrategyRequest,
)
from .factory import agent_label, build_agent

__all__ = [
    "Agent",
    "AgentError",
    "AgentReply",
    "AgentUnavailable",
    "CallRecorder",
    "ProposalRequest",
    "StrategyReply",
    "StrategyRequest",
    "agent_label",
    "build_agent",
]
