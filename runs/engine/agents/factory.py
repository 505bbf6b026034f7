"""Choosing the agent for a run, and recording its calls as LLMCall rows."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Protocol

from django.conf import settings

from ...models import AgentBackend, LLMCall, Run
from .base import Agent, CallRecorder
from .builtin import BUILTIN_LABEL, BuiltinAgent
from .endpoint_profiles import ENDPOINTS, EndpointProfile, RedisProfiles, SharedProfiles, endpoint_key
from .llm import LLMAgent
from .random_control import RANDOM_LABEL, RandomAgent
from .replayed import ReplayedLLMAgent


class SessionWatcher(Protocol):
    def on_send(self, request: dict[str, Any]) -> None: ...

    def on_recorded(self, error: str) -> None: ...


def agent_label(run: Run) -> str:
    if run.random_control:
        return RANDOM_LABEL
    experiment = run.experiment
    if experiment.agent_backend == AgentBackend.LLM:
        return f"LLM {experiment.llm_model or settings.LLM_MODEL}"
    return BUILTIN_LABEL


def recorder_for(run: Run, research_session_id: int | None = None,
                 on_recorded: Callable[[str], None] | None = None) -> CallRecorder:
    """Stores each call as an LLMCall row; `on_recorded` hears each stored call's error ("" = a reply)."""
    backend = run.experiment.agent_backend

    def record(
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
    ) -> None:
        LLMCall.objects.create(
            run=run,
            research_session_id=research_session_id,
            level=level,
            purpose=purpose,
            backend=backend,
            model=model,
            prompt=prompt,
            reply=reply,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_seconds=latency_seconds,
            timeout_seconds=timeout_seconds,
            error=error,
        )
        if on_recorded is not None:
            on_recorded(error)

    return record


@cache
def _profiles_at(url: str) -> RedisProfiles:
    return RedisProfiles(url)


def shared_profiles() -> RedisProfiles:
    """The endpoint profiles every worker, the web app and the launcher share (in the broker's Redis)."""
    return _profiles_at(settings.REDIS_URL)


def forget_endpoints() -> None:
    """Forget every endpoint profile, this process's and the shared ones."""
    ENDPOINTS.clear()
    shared_profiles().forget_all()


def build_llm_agent(run: Run, research_session_id: int | None = None,
                    watch: SessionWatcher | None = None) -> LLMAgent:
    """The run's LLM agent; `watch` (a Level 2 session's live panel) hears each request and each stored call."""
    experiment = run.experiment
    agent_class: Any = LLMAgent
    extra: dict[str, Any] = {}
    if run.is_replay:  # answered from its source's recorded replies while the prompts match
        agent_class, extra = ReplayedLLMAgent, {"replay": run}
    return agent_class(
        **extra,
        base_url=experiment.llm_base_url or settings.LLM_BASE_URL,
        api_key=experiment.llm_api_key or settings.LLM_API_KEY,
        model=experiment.llm_model or settings.LLM_MODEL,
        recorder=recorder_for(run, research_session_id, watch.on_recorded if watch else None),
        on_send=watch.on_send if watch else None,
        timeout=settings.LLM_TIMEOUT_SECONDS,
        max_timeout=settings.LLM_MAX_TIMEOUT_SECONDS,
        backoff_seconds=settings.LLM_RETRY_BACKOFF_SECONDS,
        context_tokens=settings.LLM_CONTEXT_TOKENS,
        shared=shared_profiles(),
    )


def build_agent(run: Run) -> Agent:
    if run.random_control:
        return RandomAgent()
    if run.experiment.agent_backend == AgentBackend.LLM:
        return build_llm_agent(run)
    return BuiltinAgent()


# About 700 tokens of ordinary prose and a short reply: a Level 1 proposal's proportions, small enough to
# take seconds on a CPU model. The prompt varies per probe so no server answers it from a prompt cache.
PROBE_SYSTEM = "You are a helpful assistant. Answer briefly."
PROBE_TEXT = (
    "An automated search tunes the configuration of a small language model. Each iteration proposes one change, "
    "trains the model for a fixed budget, and keeps the change if the validation loss improved. Every few "
    "iterations a strategy layer freezes parameters that stopped helping and writes guidance for the proposer. "
)
PROBE_REPLY_TOKENS = 32


def measure_endpoint(base_url: str, model: str, shared: SharedProfiles, *, cancels_abandoned: bool,
                     timeout: float, nonce: str) -> EndpointProfile:
    """One short request, timed, and what it taught stored for every process (the launcher calls this for
    the server it started). Raises AgentError if the endpoint gave no reply."""
    key = endpoint_key(base_url, model)
    # Said before the request: a worker calling meanwhile must already know not to ask twice.
    shared.merge(key, EndpointProfile(cancels_abandoned=cancels_abandoned))
    probe = LLMAgent(base_url=base_url, api_key=settings.LLM_API_KEY, model=model, recorder=_not_stored,
                     timeout=timeout, max_timeout=timeout, max_attempts=1)
    probe.profile = EndpointProfile()  # measured afresh, not from what this process knew
    probe.complete(level="probe", purpose="speed", system=PROBE_SYSTEM, json_reply=False,
                   prompt=f"Probe {nonce}. {PROBE_TEXT * 9}Summarise this in one sentence.",
                   reply_tokens=PROBE_REPLY_TOKENS)
    measured = EndpointProfile(seconds_per_token=probe.profile.seconds_per_token,
                               cancels_abandoned=cancels_abandoned, measured_by="the launcher's probe")
    return shared.merge(key, measured)


def _not_stored(**call: object) -> None:
    """The probe belongs to no run: the launcher prints what it measured instead."""
