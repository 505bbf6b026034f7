"""The run page's Level 2 panel as the database gives it (runs/engine/level2_progress.py): each call's outcome,
the totals of calls, timeouts and retries, and sessions stored before progress was kept."""

from __future__ import annotations

import pytest

from mechanisms.models import ResearchSession
from runs.engine.level2_progress import WAITING_NOTE, latest_panel, level2_panel
from runs.models import LLMCall
from tests.engine.helpers import make_experiment

pytestmark = pytest.mark.django_db


def test_calls_totals_count_a_wait_as_a_timeout_of_the_same_request_and_a_failed_send_asked_again_as_a_retry(
) -> None:
    run = make_experiment(groups=["D"], agent_backend="llm").runs.get()
    assert latest_panel(run.pk) is None
    session = ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm")
    rows = [("explore", "InternalServerError: 503", 0, 0.2),
            ("explore", f"{WAITING_NOTE}: no reply within 60 s", 0, 60), ("explore", "", 20, 80.0),
            ("critique", "APITimeoutError: no reply within 200 s", 0, 200), ("critique", "", 10, 40.0)]
    for purpose, error, tokens_out, seconds in rows:
        LLMCall.objects.create(run=run, research_session=session, level="2", purpose=purpose, backend="llm",
                               prompt="p", tokens_in=100 if tokens_out else 0, tokens_out=tokens_out,
                               latency_seconds=seconds, timeout_seconds=60, error=error)
    panel = level2_panel(session)
    assert [c["outcome"] for c in panel["calls"]] == ["error", "waiting", "ok", "timeout", "ok"]
    assert panel["calls"][2]["tokens_per_second"] == 0.25
    assert panel["totals"] == {"calls": 4, "timeouts": 2, "retries": 2, "tokens_in": 200, "tokens_out": 30}
    latest = latest_panel(run.pk)
    assert latest is not None and latest["session"] == session.pk and latest["calls"] == panel["calls"]


def test_a_session_stored_before_progress_was_kept_shows_its_recorded_rounds() -> None:
    run = make_experiment(groups=["D"]).runs.get()
    session = ResearchSession.objects.create(
        run=run, outer_cycle_index=1, backend="builtin", status="failed", status_detail="explore failed",
        artifacts={"rounds": [{"round": "explore", "attempt": 0, "seconds": 12.5, "error": "no JSON"}]})
    panel = level2_panel(session)
    assert panel["rounds"] == [{"round": "explore", "attempt": 0, "started_at": None, "ended_at": None,
                                "seconds": 12.5, "error": "no JSON", "ladder": []}]
    assert panel["current"] is None and panel["in_flight"] is None and panel["status_display"] == "Failed"
