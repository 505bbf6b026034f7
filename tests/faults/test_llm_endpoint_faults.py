"""The LLM endpoint misbehaves at the run level: refused connections, timeouts, 500/429, dropped
connections. Calls are retried a bounded number of times with backoff, then the iteration is
recorded as `invalid_proposal` with the error (a Level 2 session is recorded as `failed` with the
reason); the run is not corrupted and, paused and resumed against a working endpoint, completes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from mechanisms.models import ResearchSession, SessionStatus
from runs.engine import control
from runs.engine.level2 import execute_research_session
from runs.engine.step import execute_step
from runs.models import IterationKind, IterationStatus, LLMCall, Run, RunStatus
from tests.engine.helpers import drive, make_experiment
from tests.openai_stub import ScriptedOpenAI, scripted_openai

from .conftest import free_port

# Steps close the connection when they end (as in a worker), so these tests need real transactions;
# redis_client empties the queue the step tasks they enqueue land in.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_client")]

TIMEOUT = 0.5
ATTEMPTS = 4  # runs.engine.agents.llm.LLMAgent's default max_attempts
BACKOFF = 0.05
fast_llm = override_settings(LLM_RETRY_BACKOFF_SECONDS=BACKOFF, LLM_TIMEOUT_SECONDS=TIMEOUT)
FAULTS: dict[str, tuple[dict[str, Any] | None, str]] = {
    # name: (scripted reply, repeated; None = nothing listens on the port), expected error text
    "connection refused": (None, "APIConnectionError"),
    "slow (timeout)": ({"hang": 5}, "APITimeoutError"),
    "500": ({"status": 500}, "InternalServerError"),
    "429": ({"status": 429}, "RateLimitError"),
    "connection closed": ({"close": True}, "APIConnectionError"),
}


@pytest.fixture
def stub() -> Iterator[ScriptedOpenAI]:
    yield from scripted_openai()


def reply(changes: dict[str, Any]) -> dict[str, Any]:
    return {"content": json.dumps({"changes": changes, "hypothesis": "a working endpoint again"})}


def llm_experiment(base_url: str, **fields: Any) -> Run:
    experiment = make_experiment(
        name="llm faults", agent_backend="llm", llm_base_url=base_url, llm_model="m", llm_api_key="k", **fields
    )
    return experiment.runs.get()


def step(run: Run) -> str:
    run.refresh_from_db()
    return execute_step(run.pk, run.step_ticket, "test")


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # the port was free a moment ago: nothing listens


@fast_llm
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_endpoint_gives_a_bounded_invalid_proposal_and_the_run_resumes(
    stub: ScriptedOpenAI, fault: str
) -> None:
    script, expected = FAULTS[fault]
    run = llm_experiment(dead_url() if script is None else stub.base_url, iterations=3)
    stub.script = [dict(script) for _ in range(100)] if script else []

    assert step(run) == "baseline"  # the baseline needs no LLM
    started = time.monotonic()
    assert step(run) == IterationStatus.INVALID_PROPOSAL
    seconds = time.monotonic() - started

    iteration = run.iteration_set.get(index=1)
    assert iteration.status == IterationStatus.INVALID_PROPOSAL and iteration.val_bpb is None
    assert expected in iteration.error, iteration.error
    assert iteration.rejected_attempts and all(expected in a["reason"] for a in iteration.rejected_attempts)
    calls = list(LLMCall.objects.filter(run=run).order_by("pk"))
    print(f"\n{fault}: {len(calls)} requests, {seconds:.2f} s")
    # Retried with backoff by the client, then not re-asked: one client's worth of attempts, not 4 × 4.
    assert len(calls) == ATTEMPTS, "retried, but a bounded number of times"
    assert len(iteration.rejected_attempts) == 1
    assert "endpoint is unavailable" in iteration.error
    assert all(expected in call.error for call in calls), [c.error for c in calls]
    if script is not None:
        assert len(stub.requests) == len(calls), "every request is recorded as an LLMCall"

    # Not corrupted: the run is still running, the lease is free, the counters are consistent.
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.lease_owner == "" and run.proposals_done == 1
    assert run.best_val_bpb == run.baseline_val_bpb

    # Pause, point the experiment at a working endpoint, resume: the run completes.
    control.pause_run(run)
    stub.script = [reply({"WEIGHT_DECAY": 0.1}), reply({"WARMDOWN_RATIO": 0.3})]
    run.experiment.llm_base_url = stub.base_url
    run.experiment.save(update_fields=["llm_base_url"])
    control.resume_run(run)
    drive(run)

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    statuses = list(run.iteration_set.order_by("index").values_list("status", flat=True))
    assert statuses[:2] == [IterationStatus.BASELINE, IterationStatus.INVALID_PROPOSAL]
    assert all(s in (IterationStatus.KEEP, IterationStatus.DISCARD) for s in statuses[2:]) and len(statuses) == 4
    assert run.proposals_done == 3


@fast_llm
def test_backoff_grows_between_retries(stub: ScriptedOpenAI) -> None:
    run = llm_experiment(stub.base_url, iterations=1)
    stub.script = [{"status": 503}] * 3 + [reply({"WEIGHT_DECAY": 0.1})]
    step(run)
    assert step(run) in (IterationStatus.KEEP, IterationStatus.DISCARD)
    times = [c.created_at for c in LLMCall.objects.filter(run=run).order_by("pk")]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    # 0.05 s, 0.1 s, 0.2 s of backoff (plus the request itself): each wait at least the scheduled one.
    for gap, wait in zip(gaps, (BACKOFF, 2 * BACKOFF, 4 * BACKOFF), strict=True):
        assert gap >= wait * 0.9, gaps


@fast_llm
def test_a_level2_session_against_a_dead_endpoint_fails_with_the_reason(stub: ScriptedOpenAI) -> None:
    run = llm_experiment(stub.base_url, groups=["C"], iterations=4, strategy_interval=2)
    stub.script = [{"status": 500}] * 100
    session = ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm")

    assert execute_research_session(session.pk) == SessionStatus.FAILED

    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED and session.finished_at is not None
    assert "InternalServerError" in session.status_detail and "no usable reply" in session.status_detail
    calls = LLMCall.objects.filter(research_session=session)
    assert calls.count() == ATTEMPTS and all(c.level == "2" and c.error for c in calls)
    assert not session.attachments.exists()
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED  # the run itself is untouched by the failed session
    assert not run.iteration_set.filter(kind=IterationKind.PROPOSAL).exists()


@fast_llm
def test_nul_characters_in_replies_do_not_break_the_run(stub: ScriptedOpenAI) -> None:
    run = llm_experiment(stub.base_url, groups=["B"], iterations=2, strategy_interval=1)
    nul = "before\u0000after"
    stub.script = [
        {"content": json.dumps({"changes": {"WEIGHT_DECAY": 0.1}, "hypothesis": nul})},
        {"content": json.dumps({"guidance": nul, "strategy": nul, "reasoning": nul})},
        {"content": json.dumps({"changes": {"WARMDOWN_RATIO": 0.3}, "hypothesis": "plain"})},
    ]
    drive(run)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    first = run.iteration_set.get(index=1)
    assert first.hypothesis.startswith("before") and first.hypothesis.endswith("after")
    assert run.outer_cycles.get().guidance.startswith("before")


@fast_llm
def test_nul_characters_in_a_research_session_do_not_leave_it_running(stub: ScriptedOpenAI) -> None:
    run = llm_experiment(stub.base_url, groups=["C"], iterations=4, strategy_interval=2)
    candidates = [{"name": f"idea{i}\u0000", "idea": f"\u0000{i}"} for i in range(3)]  # three different ideas
    stub.script = [{"content": json.dumps({"diagnosis": "x\u0000y", "candidates": candidates})}] + \
        [{"content": "\u0000 not json \u0000"}] * 40
    session = ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm")
    execute_research_session(session.pk)
    session.refresh_from_db()
    assert session.status in (SessionStatus.FAILED, SessionStatus.PRODUCED) and session.finished_at is not None
    assert "DataError" not in session.status_detail, session.status_detail  # decided by the replies, not storage
    assert session.artifacts["rounds"] and session.artifacts["explore"]["diagnosis"] == "xy"
    assert not contains_nul(session.artifacts)


def contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False
