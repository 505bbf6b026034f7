"""The run page's live Level 2 panel in a real browser: a real research session (its LLM a real HTTP server
with scripted replies) runs in a worker thread of this process and publishes through the real channel layer
to the real ASGI server's WebSocket. During the session the page shows the round, the elapsed time moving,
the call in flight and each call as it is recorded; after the session failed, and after a reload, it still
shows all of it. Synchronisation is Playwright's auto-waiting, never sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from mechanisms.models import ResearchSession
from runs.engine.agents.endpoint_profiles import EndpointProfile, endpoint_key
from runs.engine.agents.factory import forget_endpoints, shared_profiles
from runs.engine.level2 import execute_research_session
from runs.models import IterationKind, IterationStatus, Run
from tests.conftest import LiveServer, log_in
from tests.engine.helpers import make_experiment
from tests.openai_stub import ScriptedOpenAI, scripted_openai
from trainer.schema import config_to_json, default_config

from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


@pytest.fixture
def stub() -> Iterator[ScriptedOpenAI]:
    forget_endpoints()
    yield from scripted_openai()


def researching_run(users: Any, stub: ScriptedOpenAI) -> tuple[Run, ResearchSession]:
    experiment = make_experiment(name="level 2 live", groups=["D"], iterations=4, strategy_interval=2,
                                 research_interval=1, agent_backend="llm", llm_base_url=stub.base_url,
                                 llm_model="slow-model", review_gate=False, created_by=users.plain)
    run = experiment.runs.get()
    run.iteration_set.create(index=0, kind=IterationKind.BASELINE, status=IterationStatus.BASELINE,
                             config=config_to_json(default_config("cpu-tiny")), val_bpb=2.5, evaluations=[2.5])
    Run.objects.filter(pk=run.pk).update(status="researching", baseline_val_bpb=2.5, best_val_bpb=2.5,
                                         status_detail="Level 2 session for outer cycle 1",
                                         waiting_since=timezone.now())
    session = ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm")
    return run, session


def run_session_in_a_worker_thread(session: ResearchSession) -> Future[str]:
    """As the research worker does; Playwright's loop owns the test thread."""

    def work() -> str:
        try:
            with override_settings(LLM_TIMEOUT_SECONDS=1.5, LLM_MAX_TIMEOUT_SECONDS=120,
                                   LLM_RETRY_BACKOFF_SECONDS=0.05):
                return execute_research_session(session.pk)
        finally:
            connection.close()

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return future


def test_the_panel_shows_a_level2_session_live_and_keeps_it_after_it_ended(
        asgi_server: LiveServer, users: Any, page: Any, stub: ScriptedOpenAI) -> None:
    in_flight = threading.Event()
    stub.script = [
        {"status": 503},  # the first explore call fails and is asked again
        {"gate": in_flight, "content": "I would explore learning rates."},  # held while the page is looked at
        {"content": "Still prose, no JSON."},
        {"content": "No JSON again."},  # explore fails after two repair rounds: the session fails
    ]
    # As the launcher says of its llama.cpp server: past its 1.5 s timeout the reply is waited for, not re-sent.
    shared_profiles().merge(endpoint_key(stub.base_url, "slow-model"), EndpointProfile(cancels_abandoned=False))
    run, session = researching_run(users, stub)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    expect(page.locator("#live-indicator")).to_have_text("live")
    expect(page.locator("#l2-round")).to_have_text("starting")  # the session is queued: nothing happened yet
    expect(page.locator("#l2-calls tr")).to_have_count(0)
    outcome = run_session_in_a_worker_thread(session)
    try:
        # During the session: the round, the failed call, its retry in flight past its timeout, the clocks moving.
        expect(page.locator("#l2-status")).to_have_text("Running")
        expect(page.locator("#l2-round")).to_have_text("explore")
        calls = page.locator("#l2-calls tr")
        expect(calls).to_have_count(2)
        expect(calls.nth(0)).to_contain_text("failed")
        expect(calls.nth(1)).to_contain_text("past its timeout: still waiting, not re-sent")
        expect(calls.nth(1).locator("td").nth(5)).to_have_text("1.5 s")  # its timeout
        expect(page.locator("#l2-in-flight")).to_contain_text("waiting for the explore reply")
        expect(page.locator("#l2-in-flight")).to_contain_text("keeps waiting instead of asking again")
        expect(page.locator("#l2-totals")).to_contain_text("1 call · 1 timeout · 0 retries")
        elapsed = page.locator("#l2-elapsed").inner_text()
        page.wait_for_function("(before) => document.getElementById('l2-elapsed').textContent !== before", arg=elapsed)
        expect(page.locator("#l2-round-elapsed")).to_contain_text("in this round")
        expect(page.locator("#progress-time")).to_contain_text("Level 2 research for")
        shot(page, "level2_panel_live")
        assert not outcome.done()
    finally:
        in_flight.set()
    assert outcome.result(timeout=120) == "failed"

    def shows_the_ended_session() -> None:
        expect(page.locator("#l2-status")).to_have_text("Failed")
        expect(page.locator("#l2-round")).to_have_text("last round explore (repair 2)")
        expect(page.locator("#l2-detail")).to_contain_text("explore failed after 2 repair rounds")
        expect(page.locator("#l2-rounds tr")).to_have_count(3)
        expect(page.locator("#l2-rounds tr").nth(0)).to_contain_text("refused")
        calls = page.locator("#l2-calls tr")
        expect(calls).to_have_count(5)
        expect(calls.nth(2)).to_contain_text("100 / 20")  # tokens in / out
        expect(calls.nth(2)).to_contain_text("reply")
        expect(calls.nth(2).locator("td").nth(5)).to_have_text("120 s")  # it waited past 1.5 s: the longest wait
        assert float(calls.nth(2).locator("td").nth(4).inner_text()) > 0  # tokens per second
        expect(page.locator("#l2-totals")).to_have_text("4 calls · 1 timeout · 1 retry · 300 tokens in, 60 out")
        expect(page.locator("#l2-in-flight")).to_have_text("")
        assert page.locator("#l2-elapsed").inner_text().endswith(" s")

    shows_the_ended_session()  # pushed over the WebSocket
    shot(page, "level2_panel_ended")
    page.reload()
    expect(page.locator("#live-indicator")).to_have_text("live")
    shows_the_ended_session()  # and kept: rebuilt from the database
    stored = ResearchSession.objects.get(pk=session.pk)
    assert [r["round"] for r in stored.artifacts["progress"]["rounds"]] == ["explore"] * 3
    assert [r["attempt"] for r in stored.artifacts["rounds"]] == [0, 1, 2]  # the result's own record kept too
