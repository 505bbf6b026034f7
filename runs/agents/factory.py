"""Choosing the agent for a run, and recording its calls as LLMCall rows."""

from __future__ import annotations

from django.conf import settings

from ..models import AgentBackend, LLMCall, Run
from .base import Agent, CallRecorder
from .builtin import BUILTIN_LABEL, BuiltinAgent
from .llm import LLMAgent
from .random_control import RANDOM_LABEL, RandomAgent


def agent_label(run: Run) -> str:
    if run.random_control:
        return RANDOM_LABEL
    experiment = run.experiment
    if experiment.agent_backend == AgentBackend.LLM:
        return f"LLM {experiment.llm_model or settings.LLM_MODEL}"
    return BUILTIN_LABEL


def recorder_for(run: Run, research_session_id: int | None = None) -> CallRecorder:
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

    return record


def build_llm_agent(run: Run, research_session_id: int | None = None) -> LLMAgent:
    experiment = run.experiment
    return LLMAgent(
        base_url=experiment.llm_base_url or settings.LLM_BASE_URL,
        api_key=experiment.llm_api_key or settings.LLM_API_KEY,
        model=experiment.llm_model or settings.LLM_MODEL,
        recorder=recorder_for(run, research_session_id),
        timeout=settings.LLM_TIMEOUT_SECONDS,
        max_timeout=settings.LLM_MAX_TIMEOUT_SECONDS,
        backoff_seconds=settings.LLM_RETRY_BACKOFF_SECONDS,
        context_tokens=settings.LLM_CONTEXT_TOKENS,
    )


def build_agent(run: Run) -> Agent:
    if run.random_control:
        return RandomAgent()
    if run.experiment.agent_backend == AgentBackend.LLM:
        return build_llm_agent(run)
    return BuiltinAgent()
