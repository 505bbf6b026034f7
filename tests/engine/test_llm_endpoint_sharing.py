"""What one process learns about an LLM endpoint (its speed, that it computes abandoned requests to their end)
every other process starts from, through Redis; and a slow reply from a server that cannot cancel is waited
for, never asked twice. The server is a real HTTP server that serves one request at a time and computes
each to its end even when its client has gone (tests/openai_stub.py, one_at_a_time)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from mechanisms.context_budget import prompt_tokens
from runs.engine.agents.base import AgentUnavailable
from runs.engine.agents.endpoint_profiles import EndpointProfile, RedisProfiles, endpoint_key
from runs.engine.agents.factory import forget_endpoints, measure_endpoint, shared_profiles
from runs.engine.agents.llm import LLMAgent, fitting_timeout
from runs.engine.agents.prompts import PROPOSAL_REPLY_TOKENS, PROPOSER_SYSTEM
from runs.engine.control import start_experiment
from runs.models import IterationKind, IterationStatus, LLMCall, Run
from tests.conftest import ROOT, ServiceProcess, child_env, start_celery_worker
from tests.engine.helpers import make_experiment
from tests.openai_stub import ScriptedOpenAI
from tests.polling import wait_until
from trainer.schema import config_to_json, default_config

MODEL = "slow-local-model"
# Another process (a worker, or the launcher) makes one call and learns the endpoint's speed.
FIRST_WORKER = textwrap.dedent("""
    import json, os, sys
    import django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bilevel_site.settings")
    django.setup()
    from runs.engine.agents.factory import shared_profiles
    from runs.engine.agents.llm import LLMAgent

    agent = LLMAgent(base_url=sys.argv[1], api_key="", model=sys.argv[2], recorder=lambda **call: None,
                     timeout=float(sys.argv[3]), shared=shared_profiles())
    agent.complete(level="1", purpose="propose", system="s", prompt="a short question", json_reply=False)
    print(json.dumps({"pid": os.getpid(), "seconds_per_token": agent.profile.seconds_per_token}))
""")


@pytest.fixture
def slow_server() -> Iterator[ScriptedOpenAI]:
    stub = ScriptedOpenAI(one_at_a_time=True)
    yield stub
    stub.close()


def proposal(changes: dict[str, Any]) -> str:
    return json.dumps({"changes": changes, "hypothesis": "less decay"})


DEFAULT_TIMEOUT = 1.0


@pytest.fixture
def worker_with_short_timeouts(transactional_db: None, redis_client: Any) -> Iterator[ServiceProcess]:
    """A real Celery worker whose LLM_TIMEOUT_SECONDS is 1 s: a 3 s reply times it out unless it knows better."""
    worker = start_celery_worker(env={**child_env(), "LLM_TIMEOUT_SECONDS": str(DEFAULT_TIMEOUT)})
    yield worker
    worker.stop()


@pytest.mark.django_db(transaction=True)
def test_a_workers_first_call_is_sent_once_with_the_timeout_another_process_learnt(
        slow_server: ScriptedOpenAI, worker_with_short_timeouts: ServiceProcess) -> None:
    # Worker B already runs (started before anything was learnt): it learns nothing by starting.
    first_reply_seconds, slow_reply_seconds = 0.5, 3.0
    slow_server.script = [{"hang": first_reply_seconds, "content": "ok"},
                          {"hang": slow_reply_seconds, "content": proposal({"WEIGHT_DECAY": 0.1})}]
    learnt = subprocess.run([sys.executable, "-c", FIRST_WORKER, slow_server.base_url, MODEL, str(DEFAULT_TIMEOUT)],
                            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert learnt.returncode == 0, learnt.stderr
    first_worker_pid = json.loads(learnt.stdout)["pid"]
    shared = shared_profiles().load(endpoint_key(slow_server.base_url, MODEL))
    assert shared is not None and shared.seconds_per_token is not None
    assert shared.measured_by == f"a call by pid {first_worker_pid}"

    # Worker B (the Celery worker, another process) runs a step whose proposal the server takes 3 s to answer;
    # B's own default timeout is 1 s: without what A learnt it would time out and ask again.
    experiment = make_experiment(iterations=1, agent_backend="llm", llm_base_url=slow_server.base_url,
                                 llm_model=MODEL, confirmation_repeats=0)
    run = experiment.runs.get()
    run.iteration_set.create(index=0, kind=IterationKind.BASELINE, status=IterationStatus.BASELINE,
                             config=config_to_json(default_config("cpu-tiny")), val_bpb=2.5, evaluations=[2.5])
    Run.objects.filter(pk=run.pk).update(baseline_val_bpb=2.5, best_val_bpb=2.5)
    start_experiment(experiment)
    wait_until(lambda: run.iteration_set.filter(index=1).exists(), 120, "the worker's proposal")

    assert len(slow_server.requests) == 2  # A's one call and B's one call: nothing asked twice
    call = LLMCall.objects.get(run=run)
    assert call.error == "" and call.latency_seconds >= slow_reply_seconds
    estimated = prompt_tokens(PROPOSER_SYSTEM, call.prompt) + PROPOSAL_REPLY_TOKENS
    expected = fitting_timeout(shared.seconds_per_token, estimated, DEFAULT_TIMEOUT, settings.LLM_MAX_TIMEOUT_SECONDS)
    assert call.timeout_seconds == pytest.approx(expected)  # the learnt speed's timeout, recorded
    assert call.timeout_seconds > slow_reply_seconds > DEFAULT_TIMEOUT
    assert run.iteration_set.get(index=1).status != IterationStatus.INVALID_PROPOSAL


@pytest.fixture(autouse=True)
def fresh_profiles(redis_client: Any) -> Iterator[None]:
    forget_endpoints()
    yield
    forget_endpoints()


def recorded() -> tuple[list[dict[str, Any]], Any]:
    calls: list[dict[str, Any]] = []
    return calls, lambda **call: calls.append(call)


@pytest.mark.django_db
def test_past_its_timeout_a_call_to_a_server_that_cannot_cancel_is_waited_for_not_asked_again(
        slow_server: ScriptedOpenAI) -> None:
    key = endpoint_key(slow_server.base_url, MODEL)
    shared_profiles().merge(key, EndpointProfile(cancels_abandoned=False))  # what the launcher says of its server
    slow_server.script = [{"hang": 2.5, "content": "the answer"}]
    calls, recorder = recorded()
    agent = LLMAgent(base_url=slow_server.base_url, api_key="", model=MODEL, recorder=recorder, timeout=1.0,
                     max_timeout=60.0, shared=shared_profiles())
    assert agent.complete(level="2", purpose="explore", system="s", prompt="p", json_reply=False) == "the answer"
    assert len(slow_server.requests) == 1
    waited, answered = calls
    assert waited["error"].startswith("waiting past the timeout: no reply within 1 s")
    assert waited["timeout_seconds"] == 1
    assert answered["error"] == "" and answered["timeout_seconds"] == 60 and answered["latency_seconds"] >= 2.5


@pytest.mark.django_db
def test_a_server_that_cannot_cancel_is_not_asked_again_even_past_the_longest_wait(
        slow_server: ScriptedOpenAI) -> None:
    shared_profiles().merge(endpoint_key(slow_server.base_url, MODEL), EndpointProfile(cancels_abandoned=False))
    slow_server.script = [{"hang": 4, "content": "too late"}]
    calls, recorder = recorded()
    agent = LLMAgent(base_url=slow_server.base_url, api_key="", model=MODEL, recorder=recorder, timeout=0.5,
                     max_timeout=1.5, backoff_seconds=0.01, shared=shared_profiles())
    with pytest.raises(AgentUnavailable, match="not asked again"):
        agent.complete(level="1", purpose="propose", system="s", prompt="p", json_reply=False)
    assert len(slow_server.requests) == 1
    assert [c["timeout_seconds"] for c in calls] == [0.5, 1.5]


@pytest.mark.django_db
def test_a_server_that_cancels_is_still_asked_again_with_more_time() -> None:
    """The old behaviour stays for endpoints nobody said anything about (a cloud API drops abandoned work)."""
    parallel_server = ScriptedOpenAI()
    parallel_server.script = [{"hang": 1.5, "content": "late"}, {"content": "the answer"}]
    calls, recorder = recorded()
    agent = LLMAgent(base_url=parallel_server.base_url, api_key="", model=MODEL, recorder=recorder, timeout=0.5,
                     backoff_seconds=0.01, shared=shared_profiles())
    try:
        assert agent.complete(level="1", purpose="propose", system="s", prompt="p", json_reply=False) == "the answer"
    finally:
        parallel_server.close()
    assert [c["timeout_seconds"] for c in calls] == [0.5, 1.0] and len(parallel_server.requests) == 2


@pytest.mark.django_db
def test_the_launchers_probe_shares_speed_and_cannot_cancel_before_any_worker_calls(
        slow_server: ScriptedOpenAI) -> None:
    slow_server.script = [{"hang": 0.4, "content": "A search tunes a model."}]
    profile = measure_endpoint(slow_server.base_url, MODEL, shared_profiles(), cancels_abandoned=False, timeout=30,
                               nonce="n1")
    assert slow_server.requests[0]["max_tokens"] == 32
    assert "Probe n1." in slow_server.requests[0]["messages"][1]["content"]
    stored = shared_profiles().load(endpoint_key(slow_server.base_url, MODEL))
    assert stored == profile
    assert stored.cancels_abandoned is False and stored.measured_by == "the launcher's probe"
    assert stored.seconds_per_token is not None and stored.seconds_per_token >= 0.4 / 120


def test_profiles_merge_to_what_anyone_learnt() -> None:
    ours = EndpointProfile(mode="json_object_schema", seconds_per_token=0.01, measured_by="us")
    ours.absorb(EndpointProfile(mode="json_schema", max_tokens=False, seconds_per_token=0.05,
                                cancels_abandoned=False, measured_by="them"))
    assert ours == EndpointProfile(mode="json_object_schema", max_tokens=False, seconds_per_token=0.05,
                                   cancels_abandoned=False, measured_by="them")
    ours.absorb(EndpointProfile(seconds_per_token=0.02))  # a faster reading never shortens the timeouts
    assert ours.seconds_per_token == 0.05


@override_settings(REDIS_URL="redis://127.0.0.1:1/0")
def test_without_redis_each_process_keeps_what_it_learnt() -> None:
    unreachable = RedisProfiles(settings.REDIS_URL)
    assert unreachable.load("x|m") is None
    mine = EndpointProfile(seconds_per_token=0.2)
    assert unreachable.merge("x|m", mine) == mine


@pytest.mark.django_db
def test_a_reply_within_its_timeout_records_that_timeout_not_the_longest_wait(slow_server: ScriptedOpenAI) -> None:
    shared_profiles().merge(endpoint_key(slow_server.base_url, MODEL), EndpointProfile(cancels_abandoned=False))
    slow_server.script = [{"content": "quick"}]
    calls, recorder = recorded()
    agent = LLMAgent(base_url=slow_server.base_url, api_key="", model=MODEL, recorder=recorder, timeout=5.0,
                     max_timeout=60.0, shared=shared_profiles())
    assert agent.complete(level="1", purpose="propose", system="s", prompt="p", json_reply=False) == "quick"
    assert [(c["error"], c["timeout_seconds"]) for c in calls] == [("", 5.0)]
