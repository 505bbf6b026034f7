"""End to end: a surrogate run whose Level 2 activated mechanisms finishes on a real Celery worker, its
paired replays are made by a task without anyone asking and stepped by the same worker, and the run page
draws the credit waterfall in Chromium."""

from __future__ import annotations

from typing import Any

import pytest

from runs.analysis.credit import run_credits
from runs.engine.control import create_runs, start_experiment
from runs.mechanism_spans import mechanism_spans, removal_sets
from runs.models import Run, RunKind
from tests.conftest import LiveServer, ServiceProcess, log_in
from tests.polling import wait_until

from .conftest import make_experiment
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_replays_run_by_themselves_after_a_surrogate_run_and_the_waterfall_renders(
    celery_worker: ServiceProcess, asgi_server: LiveServer, users: Any, page: Any
) -> None:
    experiment = make_experiment(users.plain, name="credit", groups=["C"], iterations=9, strategy_interval=3,
                                 research_interval=1, review_gate=False, objective="surrogate",
                                 budget_kind="flops", budget_value=1.5e12, seed_base=2)
    [run] = create_runs(experiment)
    start_experiment(experiment)
    wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 240, "the run to finish")
    run.refresh_from_db()
    assert run.status == "completed", run.status_detail
    spans = mechanism_spans(run)
    assert len(spans) >= 2, "Level 2 should have activated two catalogue mechanisms"
    wanted = len(removal_sets(spans))

    def replays_done() -> bool:
        replays = Run.all_objects.filter(replay_of=run, kind=RunKind.REPLAY)
        return replays.count() == wanted and all(r.is_finished for r in replays)

    wait_until(replays_done, 240, f"{wanted} replays to finish")
    assert all(r.status == "completed" for r in Run.all_objects.filter(replay_of=run))
    credits = run_credits(run)
    assert credits.complete

    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    waterfall = page.locator("#credit-waterfall")
    expect(waterfall).to_be_visible()
    bars = page.locator("#credit-waterfall rect.wf-bar")
    expect(bars).to_have_count(len(credits.waterfall()))
    labels = [bars.nth(i).get_attribute("data-label") for i in range(bars.count())]
    assert labels[:2] == ["baseline", "Level 1 + 1.5 alone"] and labels[-1] == "final best"
    assert [s.name for s in spans] == labels[2:2 + len(spans)]
    for i in range(bars.count()):
        box = bars.nth(i).bounding_box()
        assert box is not None and box["width"] > 5 and box["height"] >= 1
    expect(page.locator("#replays-table tbody tr")).to_have_count(wanted)
    shot(page, "run-page-credit-waterfall")
    page.locator("#credit").screenshot(path="/tmp/shots/credit-waterfall-section.png")
