"""In a real browser: why a proposal was invalid and why a Level 2 session failed are readable on the run
page (the session's rounds are drawn by run_page.js from the snapshot, as text)."""

from __future__ import annotations

from typing import Any

import pytest

from mechanisms.models import ResearchSession, SessionStatus
from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import XSS, expect, fail_on_dialog

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_invalid_proposals_and_failed_sessions_show_their_reasons(
    asgi_server: LiveServer, users: Any, page: Any
) -> None:
    experiment = make_experiment(users.plain, name="reasons", groups=["C"], iterations=4, strategy_interval=2)
    run = make_run(experiment, "C", status="running", level_strategy=True, level_research=True,
                   baseline_val_bpb=2.70, best_val_bpb=2.70)
    make_iteration(run, 0, val_bpb=2.70)
    make_iteration(run, 1, status="invalid_proposal", val_bpb=None, changes={},
                   error="no valid proposal after 4 attempts; last: WARMUP_RATIO must be a number, got [0.1, 0.2]",
                   rejected_attempts=[{"attempt": 1, "source": "agent", "changes": {"WARMUP_RATIO": [0.1, 0.2]},
                                       "reason": "WARMUP_RATIO must be a number, got [0.1, 0.2]"}])
    rounds = [{"round": "explore", "attempt": 0, "prompt": "p", "reply": f'{{"diagnosis": "{XSS}"}}', "parsed": None,
               "error": "it repeats the reply format ('must be a list of') instead of filling it in", "seconds": 1.0}]
    ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm", status=SessionStatus.FAILED,
                                   status_detail="explore failed after 2 repair rounds", artifacts={"rounds": rounds})
    dialogs = fail_on_dialog(page)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")

    row = page.locator("#iteration-table tbody tr[data-index='1']")
    expect(row).to_contain_text("WARMUP_RATIO must be a number, got [0.1, 0.2]")
    expect(row).to_contain_text('refused: {"WARMUP_RATIO": [0.1, 0.2]}')
    sessions = page.locator("#research-sessions")
    expect(sessions).to_contain_text("explore failed after 2 repair rounds")
    sessions.locator("summary", has_text="1 round").click()
    expect(sessions.locator(".session-rounds li")).to_contain_text("refused: it repeats the reply format")
    expect(sessions.locator(".round-reply")).to_have_text(f'{{"diagnosis": "{XSS}"}}')  # text, not markup
    assert dialogs == []
