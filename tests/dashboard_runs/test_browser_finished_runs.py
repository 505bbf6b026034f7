"""A finished run in a real browser looks finished: no live badge (even once the socket is open),
past-tense notes, no empty training-curve panel on the surrogate, and a val_bpb legend that lists
only what is drawn, each name once."""

from __future__ import annotations

from typing import Any

import pytest

from runs.models import OuterCycle
from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_finished_surrogate_run_shows_no_live_badge_and_says_why_panels_are_empty(
    asgi_server: LiveServer, users: Any, page: Any
) -> None:
    experiment = make_experiment(users.plain, name="done", groups=["B"], iterations=2, strategy_interval=1,
                                 objective="surrogate")
    run = make_run(experiment, "B", status="completed", level_strategy=True, baseline_val_bpb=2.70,
                   best_val_bpb=2.65, proposals_done=2)
    make_iteration(run, 0, val_bpb=2.70)
    make_iteration(run, 1, status="keep", val_bpb=2.65)
    make_iteration(run, 2, val_bpb=2.69)
    OuterCycle.objects.create(run=run, index=1, after_iteration=1, frozen=[], reasons={})
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")

    # The socket opens (the table is refreshed on open), and the badge still says finished.
    expect(page.locator("#chart-note")).to_contain_text("noise sd not measured")
    page.wait_for_function("window.bilevelRunPage && window.bilevelRunPage.socket")
    indicator = page.locator("#live-indicator")
    expect(indicator).to_have_text("finished")
    expect(page.locator(".live.on")).to_have_count(0)
    expect(page.locator("#frozen-grid")).to_contain_text("No parameter was frozen in this run.")
    expect(page.locator("#curve-none")).to_contain_text("surrogate objective predicts val_bpb")
    expect(page.locator("#curve-chart")).to_be_hidden()
    shot(page, "run-page-finished-surrogate")

    legend = page.evaluate("window.bilevelRunPage.chart.legend.legendItems.map((item) => item.text)")
    assert len(legend) == len(set(legend)), legend
    assert not any("noise sd" in text for text in legend), legend
    assert "baseline training" in legend and "baseline mean" in legend
