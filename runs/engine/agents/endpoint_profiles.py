"""What is learnt about an LLM endpoint, and sharing it between every process that talks to it.

A profile says which structured-output mode the endpoint takes, whether it takes max_tokens, how fast it
is (seconds per token) and whether it goes on computing a request its client gave up on (llama.cpp's
Python server does; a cloud API does not matter). Every worker process used to learn all of this on its
own, starting from LLM_TIMEOUT_SECONDS: each worker's first long call against a slow local model timed out
and was asked again, and the retry queued behind the request the server was still computing. Now the
first measurement (the launcher's, at the server's start, or any worker's first reply) goes to Redis, and
every process starts from it.

Sharing is an optimisation: a Redis that cannot be reached leaves each process with what it learnt itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from typing import Protocol, cast

import redis

logger = logging.getLogger(__name__)

# Best first. "json_object_schema" is llama-cpp-python's server's form of a schema ({"type": "json_object",
# "schema": ...}): it answers 500 to json_schema, and plain json_object let a small model invent any object.
MODES = ("json_schema", "json_object_schema", "json_object", "text")
REDIS_PREFIX = "bilevel:llm-endpoint:"
# A profile nobody refreshed for this long is dropped: the server behind a URL may have changed.
PROFILE_TTL_SECONDS = 7 * 24 * 3600


@dataclass
class EndpointProfile:
    """What was learnt about one endpoint: the structured-output mode that works, and its speed."""

    mode: str = MODES[0]
    # Replies are capped with max_tokens: a small model under a JSON grammar can emit whitespace until the
    # context is full, and llama.cpp goes on generating after the client gave up. Endpoints that refuse the
    # parameter (some reasoning models want max_completion_tokens) are asked without it.
    max_tokens: bool = True
    seconds_per_token: float | None = None  # latest measured (prompt + reply tokens), slowest kept
    # False: the server computes an abandoned request to its end, so a retry would queue behind it; the
    # client waits for its request instead of asking again. Said by whoever started the server (the launcher).
    cancels_abandoned: bool = True
    measured_by: str = ""  # who measured seconds_per_token: "launcher probe", "worker pid 123", ...

    def absorb(self, other: EndpointProfile) -> None:
        """Take what `other` knows: the further stepped-down mode, the slowest speed, any 'cannot'."""
        self.mode = MODES[max(_mode_rank(self.mode), _mode_rank(other.mode))]
        self.max_tokens = self.max_tokens and other.max_tokens
        self.cancels_abandoned = self.cancels_abandoned and other.cancels_abandoned
        if other.seconds_per_token is not None and (
                self.seconds_per_token is None or other.seconds_per_token > self.seconds_per_token):
            self.seconds_per_token, self.measured_by = other.seconds_per_token, other.measured_by

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> EndpointProfile:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _mode_rank(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else 0


def endpoint_key(base_url: str, model: str) -> str:
    return f"{base_url.rstrip('/')}|{model}"


# This process's profiles: they outlive the agent objects the engine builds anew every iteration.
ENDPOINTS: dict[str, EndpointProfile] = {}


def endpoint_profile(base_url: str, model: str) -> EndpointProfile:
    return ENDPOINTS.setdefault(endpoint_key(base_url, model), EndpointProfile())


class SharedProfiles(Protocol):
    """Where processes share profiles. `merge` stores what a process learnt and returns the union."""

    def load(self, key: str) -> EndpointProfile | None: ...

    def merge(self, key: str, profile: EndpointProfile) -> EndpointProfile: ...


class RedisProfiles:
    """Profiles as JSON under one Redis key per endpoint, merged under WATCH so no lesson is lost."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _name(self, key: str) -> str:
        return REDIS_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]

    def load(self, key: str) -> EndpointProfile | None:
        try:
            stored = cast(bytes | None, self.client.get(self._name(key)))
            return EndpointProfile.from_json(stored) if stored else None
        except (redis.RedisError, OSError, ValueError, TypeError) as error:
            logger.warning("the shared LLM endpoint profile could not be read (%s); using this process's", error)
            return None

    def merge(self, key: str, profile: EndpointProfile) -> EndpointProfile:
        name = self._name(key)
        merged = EndpointProfile(**asdict(profile))
        try:
            with self.client.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(name)
                        stored = cast(bytes | None, pipe.get(name))
                        merged = EndpointProfile(**asdict(profile))
                        if stored:
                            merged.absorb(EndpointProfile.from_json(stored))
                        pipe.multi()
                        pipe.set(name, merged.to_json(), ex=PROFILE_TTL_SECONDS)
                        pipe.execute()
                        return merged
                    except redis.WatchError:  # another process wrote meanwhile: merge with theirs
                        continue
        except (redis.RedisError, OSError, ValueError, TypeError) as error:
            logger.warning("the LLM endpoint profile could not be shared (%s); other processes learn it alone", error)
            return merged

    def forget_all(self) -> None:
        """Drop every shared profile (tests: each stub is a new endpoint on a port an earlier one may have had)."""
        for name in self.client.scan_iter(match=REDIS_PREFIX + "*"):
            self.client.delete(name)
