"""The LLM agent: any OpenAI-compatible chat-completions endpoint.

Structured output is used where the endpoint supports it: response_format json_schema (decoding
constrained to the reply's schema), else json_object with the schema (llama-cpp-python's form), else
json_object, else plain text with the JSON extracted. The
working mode is found once per endpoint (base URL + model) and kept in ENDPOINTS, which outlives
the agent object the engine builds anew every iteration. A 4xx or 5xx that names response_format
(llama.cpp answers 500 to a schema it cannot compile) steps down one mode at once, without
counting as an attempt. 429, other 5xx, timeouts and dropped connections are retried
with exponential backoff, a bounded number of times.

Timeouts follow the endpoint's measured speed: after each reply the seconds per (estimated) token
are kept, and a request gets several times what its size should take at that speed, never less than
LLM_TIMEOUT_SECONDS. What is learnt about an endpoint is shared with every other process through
Redis (endpoint_profiles.py), so a worker's first call already has the timeout another measured. A
request that timed out is retried with twice the time, except against a server that goes on with an
abandoned request (the launcher's llama.cpp): there the client waits for its request, up to
LLM_MAX_TIMEOUT_SECONDS, rather than queue a second copy behind the first. Every call, failed or not,
is stored through the recorder with its prompt, reply, tokens, latency and timeout.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as StillWaiting
from typing import Any

import openai

from mechanisms.context_budget import DEFAULT_CONTEXT_TOKENS, prompt_tokens
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
from .endpoint_profiles import SharedProfiles, endpoint_key, endpoint_profile
from .prompts import (
    PROPOSAL_REPLY_TOKENS,
    PROPOSER_SYSTEM,
    STRATEGIST_SYSTEM,
    STRATEGY_REPLY_TOKENS,
    proposal_prompt,
    proposal_schema,
    strategy_prompt,
)

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
FORMAT_WORDS = ("response_format", "json_schema", "json schema", "grammar")  # in llama.cpp's errors too
# A request gets this many times what its size should take at the endpoint's measured speed.
TIMEOUT_SAFETY = 4.0
REPLY_RESERVE_TOKENS = 1024  # the reply's share when the caller gives no schema-sized estimate
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
def fitting_timeout(seconds_per_token: float | None, estimated_tokens: int, minimum: float, maximum: float) -> float:
    """Several times what a request of this size should take at the measured speed, within [minimum, maximum]."""
    if seconds_per_token is None:
        return minimum
    return min(maximum, max(minimum, estimated_tokens * seconds_per_token * TIMEOUT_SAFETY))


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
        max_timeout: float = 1800.0,
        max_attempts: int = 4,
        backoff_seconds: float = 1.0,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        shared: SharedProfiles | None = None,
        on_send: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.model = model
        self.label = f"LLM {model} @ {base_url}"
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0)
        self.recorder = recorder
        self.min_timeout = timeout
        self.max_timeout = max(timeout, max_timeout)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.context_tokens = context_tokens
        self.key = endpoint_key(base_url, model)
        self.profile = endpoint_profile(base_url, model)
        self.shared = shared
        self.on_send = on_send  # hears each request as it goes out (a live view of a call in flight)
        if shared is not None and (known := shared.load(self.key)) is not None:
            self.profile.absorb(known)  # what another process (or the launcher) learnt, before the first call
        self.last_cut_off = False  # did the last reply stop at max_tokens?
        self.waited_past_timeout = False  # did the last request outlast its timeout (a non-cancelling server)?

    def _share(self) -> None:
        """Tell every other process what this one learnt (and take what they learnt meanwhile)."""
        if self.shared is not None:
            self.profile.absorb(self.shared.merge(self.key, self.profile))

    def timeout_for(self, estimated_tokens: int) -> float:
        """Seconds to allow a request of this size: scaled by the endpoint's measured speed."""
        return fitting_timeout(self.profile.seconds_per_token, estimated_tokens, self.min_timeout, self.max_timeout)

    def _response_format(self, mode: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        if schema is not None and mode == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_object"} if mode != "text" else None

    def complete(
        self,
        *,
        level: str,
        purpose: str,
        system: str,
        prompt: str,
        json_reply: bool = True,
        schema: dict[str, Any] | None = None,
        reply_tokens: int = REPLY_RESERVE_TOKENS,
        temperature: float | None = None,
    ) -> str:
        """One reply text, after bounded retries; raises AgentError if none could be had.

        `temperature` None leaves sampling to the endpoint's default."""
        estimated = prompt_tokens(system, prompt) + reply_tokens
        if estimated > self.context_tokens:
            # Sending it would only earn a 400 (or a silently truncated prompt) from the endpoint.
            error = (
                f"the prompt needs about {estimated} tokens with its reply; the context window is {self.context_tokens}"
            )
            self._record(level, purpose, prompt, "", time.monotonic(), error, None, 0.0)
            raise AgentError(error)
        timeout = self.timeout_for(estimated)
        last_error = ""
        unavailable = False  # did the last attempt fail in transport (as opposed to an empty reply)?
        attempt = 0
        while attempt < self.max_attempts:
            started = time.monotonic()
            response_format = self._response_format(self.profile.mode, schema) if json_reply else None
            kwargs: dict[str, Any] = {"response_format": response_format} if response_format else {}
            if temperature is not None:
                kwargs["temperature"] = temperature
            if self.profile.max_tokens:
                kwargs["max_tokens"] = reply_tokens
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            waits = not self.profile.cancels_abandoned
            if self.on_send is not None:
                self.on_send({"level": level, "purpose": purpose, "timeout_seconds": timeout, "waits": waits,
                              "estimated_tokens": estimated})
            try:
                if waits:
                    response = self._wait_for_reply(messages, kwargs, timeout, (level, purpose, prompt, started))
                else:
                    response = self.client.chat.completions.create(
                        model=self.model, messages=messages, timeout=timeout, **kwargs)  # type: ignore[arg-type]
            except openai.APIStatusError as error:
                last_error = f"{type(error).__name__}: {error}"
                self._record(level, purpose, prompt, "", started, last_error, None, timeout)
                if response_format is not None and _names_format(error):
                    # Not counted as an attempt: there are only len(MODES) - 1 steps down.
                    self.profile.mode = _next_mode(response_format)
                    self._share()
                    continue
                if "max_tokens" in kwargs and error.status_code == 400 and "max_tokens" in f"{error} {_body(error)}":
                    self.profile.max_tokens = False
                    self._share()
                    continue
                attempt += 1
                if not isinstance(error, RETRYABLE):
                    raise AgentError(f"the endpoint refused the request: {error}") from error
                unavailable = True
                self._backoff(attempt)
                continue
            except RETRYABLE as error:
                attempt += 1
                last_error, unavailable = f"{type(error).__name__}: {error}", True
                allowed = self.max_timeout if waits else timeout
                if isinstance(error, openai.APITimeoutError):
                    last_error = f"APITimeoutError: no reply within {allowed:g} s"
                self._record(level, purpose, prompt, "", started, last_error, None, allowed)
                if waits and isinstance(error, openai.APITimeoutError):
                    # Asking again would queue a copy behind the request the server is still computing.
                    raise AgentUnavailable(f"{last_error}; not asked again: this server goes on computing an "
                                           "abandoned request") from error
                if isinstance(error, openai.APITimeoutError):
                    # A slow endpoint not measured yet (a CPU model's first long prompt) gets more time.
                    timeout = min(self.max_timeout, timeout * 2)
                self._backoff(attempt)
                continue
            except openai.OpenAIError as error:
                self._record(level, purpose, prompt, "", started, str(error), None, timeout)
                raise AgentError(f"LLM call failed: {error}") from error
            attempt += 1
            content = without_nul(response.choices[0].message.content) if response.choices else None
            # "length": the reply hit max_tokens and ends mid-sentence (or mid-statement); callers say so.
            finish_reason = getattr(response.choices[0], "finish_reason", None) if response.choices else None
            self.last_cut_off = finish_reason == "length"
            self._record(
                level, purpose, prompt, content or "", started, "" if content else "empty reply", response,
                self.max_timeout if waits and self.waited_past_timeout else timeout,
            )
            if not content or not content.strip():
                last_error, unavailable = "the endpoint returned an empty reply", False
                continue
            self._measure(started, response, estimated)
            return content
        failure = AgentUnavailable if unavailable else AgentError
        raise failure(f"no usable reply after {self.max_attempts} attempts: {last_error}")

    def _wait_for_reply(self, messages: list[dict[str, str]], kwargs: dict[str, Any], timeout: float,
                        call: tuple[str, str, str, float]) -> Any:
        """Send once and wait up to max_timeout. Past the fitting `timeout` the wait is recorded as a timeout
        (the call list shows it as it happens), but the request is not abandoned and asked again: this
        server would compute the abandoned one to its end and only then start on the copy."""
        level, purpose, prompt, started = call
        self.waited_past_timeout = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-call") as pool:
            reply = pool.submit(lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, timeout=self.max_timeout, **kwargs))  # type: ignore[arg-type]
            try:
                return reply.result(timeout=timeout)
            except StillWaiting:
                note = (f"waiting past the timeout: no reply within {timeout:g} s; this server goes on computing "
                        f"an abandoned request, so the client keeps waiting for this one (up to "
                        f"{self.max_timeout:g} s) instead of asking again")
                self._record(level, purpose, prompt, "", started, note, None, timeout)
                self.waited_past_timeout = True  # the reply's row says it was allowed max_timeout
            return reply.result()

    def _backoff(self, attempt: int) -> None:
        if attempt < self.max_attempts:
            time.sleep(self.backoff_seconds * 2 ** (attempt - 1))

    def _measure(self, started: float, response: Any, estimated: int) -> None:
        usage = getattr(response, "usage", None)
        tokens = (getattr(usage, "prompt_tokens", 0) or 0) + (getattr(usage, "completion_tokens", 0) or 0)
        speed = (time.monotonic() - started) / max(1, tokens or estimated)
        # The slowest speed seen wins: a long prompt on a CPU model is slower per token than a short one.
        if speed > (self.profile.seconds_per_token or 0.0):
            self.profile.seconds_per_token, self.profile.measured_by = speed, f"a call by pid {os.getpid()}"
            self._share()

    def _record(
        self,
        level: str,
        purpose: str,
        prompt: str,
        reply: str,
        started: float,
        error: str,
        response: Any,
        timeout: float,
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
            timeout_seconds=timeout,
        )

    def propose(self, request: ProposalRequest) -> AgentReply:
        state = request.state
        text = self.complete(
            level="1",
            purpose="propose",
            system=PROPOSER_SYSTEM,
            prompt=proposal_prompt(request, self.context_tokens),
            schema=proposal_schema(state["search_space"], request.allowed),
            reply_tokens=PROPOSAL_REPLY_TOKENS,
        )
        return parse_proposal(text, {k["name"] for k in state["search_space"]})

    def strategize(self, request: StrategyRequest) -> StrategyReply:
        text = self.complete(
            level="1.5",
            purpose="strategy",
            system=STRATEGIST_SYSTEM,
            prompt=strategy_prompt(request, self.context_tokens),
            schema=STRATEGY_SCHEMA,
            reply_tokens=STRATEGY_REPLY_TOKENS,
        )
        data = extract_json_object(text)
        return StrategyReply(
            guidance=str(data.get("guidance", ""))[:4000],
            strategy=str(data.get("strategy", ""))[:200],
            reasoning=str(data.get("reasoning", ""))[:4000],
        )


STRATEGY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"guidance": {"type": "string"}, "strategy": {"type": "string"}, "reasoning": {"type": "string"}},
    "required": ["guidance", "strategy", "reasoning"],
}


def _next_mode(sent: dict[str, Any]) -> str:
    if sent["type"] == "json_schema":
        return "json_object_schema"
    return "json_object" if "schema" in sent else "text"


def _names_format(error: openai.APIStatusError) -> bool:
    text = f"{error} {_body(error)}".lower()
    return any(word in text for word in FORMAT_WORDS)


def _body(error: openai.APIStatusError) -> str:
    try:
        return json.dumps(error.body).lower()
    except (TypeError, ValueError):
        return ""
