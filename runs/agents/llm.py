"""The LLM agent: any OpenAI-compatible chat-completions endpoint.

JSON replies are requested with response_format=json_object; a backend that rejects that
parameter is asked again without it (remembered for the rest of the run). 429, 5xx, timeouts
and dropped connections are retried with exponential backoff, a bounded number of times. Every
call, failed or not, is stored through the recorder with its prompt, reply, tokens and latency.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import openai

from mechanisms.text import without_nul

from .base import (
    AgentError,
    AgentReply,
    AgentUnavailable,
    CallRecorder,
    ProposalRequest,
    StrategyReply,
    StrategyRequest,
)
from .prompts import PROPOSER_SYSTEM, STRATEGIST_SYSTEM, proposal_prompt, strategy_prompt

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply: bare, inside a code fence, or embedded in prose."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        candidate = candidate.strip()
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = json.JSONDecoder().raw_decode(candidate[start:])
            except json.JSONDecodeError:
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return dict(without_nul(value))  # a JSON \u0000 escape decodes to a NUL
            start = candidate.find("{", start + 1)
    raise AgentError(f"the reply contains no JSON object: {text[:200]!r}")


def parse_proposal(text: str, knob_names: set[str]) -> AgentReply:
    data = extract_json_object(text)
    changes = data.get("changes")
    if changes is None and any(key in knob_names for key in data):
        changes = {key: value for key, value in data.items() if key in knob_names}  # a flat reply
    if not isinstance(changes, dict) or not changes:
        raise AgentError('the reply has no "changes" object naming at least one parameter')
    hypothesis = data.get("hypothesis", "")
    if not isinstance(hypothesis, str):
        hypothesis = json.dumps(hypothesis)
    return AgentReply(changes=changes, hypothesis=hypothesis[:4000], raw=text)


class LLMAgent:
    backend = "llm"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        recorder: CallRecorder,
        timeout: float = 60.0,
        max_attempts: int = 4,
        backoff_seconds: float = 1.0,
    ) -> None:
        self.model = model
        self.label = f"LLM {model} @ {base_url}"
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0)
        self.recorder = recorder
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.json_mode = True

    def complete(self, *, level: str, purpose: str, system: str, prompt: str, json_reply: bool = True) -> str:
        """One reply text, after bounded retries; raises AgentError if none could be had."""
        last_error = ""
        unavailable = False  # did the last attempt fail in transport (as opposed to an empty reply)?
        for attempt in range(1, self.max_attempts + 1):
            started = time.monotonic()
            kwargs: dict[str, Any] = {}
            if json_reply and self.json_mode:
                kwargs["response_format"] = {"type": "json_object"}
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                    **kwargs,
                )
            except openai.BadRequestError as error:
                self._record(level, purpose, prompt, "", started, str(error), None)
                if "response_format" in kwargs and "response_format" in str(error).lower() + _body(error):
                    self.json_mode = False  # this backend does not support JSON mode: ask plainly
                    continue
                raise AgentError(f"the endpoint refused the request: {error}") from error
            except RETRYABLE as error:
                last_error, unavailable = f"{type(error).__name__}: {error}", True
                self._record(level, purpose, prompt, "", started, last_error, None)
                if attempt < self.max_attempts:
                    time.sleep(self.backoff_seconds * 2 ** (attempt - 1))  # backoff between retries
                continue
            except openai.OpenAIError as error:
                self._record(level, purpose, prompt, "", started, str(error), None)
                raise AgentError(f"LLM call failed: {error}") from error
            content = without_nul(response.choices[0].message.content) if response.choices else None
            self._record(level, purpose, prompt, content or "", started, "" if content else "empty reply", response)
            if not content or not content.strip():
                last_error, unavailable = "the endpoint returned an empty reply", False
                continue
            return content
        failure = AgentUnavailable if unavailable else AgentError
        raise failure(f"no usable reply after {self.max_attempts} attempts: {last_error}")

    def _record(
        self, level: str, purpose: str, prompt: str, reply: str, started: float, error: str, response: Any
    ) -> None:
        usage = getattr(response, "usage", None)
        self.recorder(
            level=level,
            purpose=purpose,
            prompt=prompt,
            reply=reply,
            model=self.model,
            tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
            tokens_out=getattr(usage, "completion_tokens", 0) or 0,
            latency_seconds=time.monotonic() - started,
            error=error,
        )

    def propose(self, request: ProposalRequest) -> AgentReply:
        text = self.complete(level="1", purpose="propose", system=PROPOSER_SYSTEM, prompt=proposal_prompt(request))
        return parse_proposal(text, {k["name"] for k in request.state["search_space"]})

    def strategize(self, request: StrategyRequest) -> StrategyReply:
        text = self.complete(level="1.5", purpose="strategy", system=STRATEGIST_SYSTEM, prompt=strategy_prompt(request))
        data = extract_json_object(text)
        return StrategyReply(
            guidance=str(data.get("guidance", ""))[:4000],
            strategy=str(data.get("strategy", ""))[:200],
            reasoning=str(data.get("reasoning", ""))[:4000],
        )


def _body(error: openai.APIStatusError) -> str:
    try:
        return json.dumps(error.body).lower()
    except (TypeError, ValueError):
        return ""
