"""In a real browser: the run page rings extrapolated surrogate values and says how many; the experiment form
shows what real confirmation will cost as groups, repeats and r change, and hides it for the real trainer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_the_run_page_marks_extrapolated_points(asgi_server: LiveServer, users: Any, page: Any) -> None:
    experiment = make_experiment(users.plain, name="support", groups=["A"], iterations=3, objective="surrogate")
    run = make_run(experiment, "A", status="completed", baseline_val_bpb=3.1, best_val_bpb=2.9, proposals_done=3)
    make_iteration(run, 0, val_bpb=3.1, support_distance=0.0, nearest_measured_val_bpb=3.09)
    make_iteration(run, 1, status="keep", val_bpb=2.9, extrapolated=True, support_distance=2.4,
                   nearest_measured_val_bpb=2.95)
    make_iteration(run, 2, val_bpb=3.0)
    make_iteration(run, 3, val_bpb=3.2, extrapolated=True, support_distance=3.1, nearest_measured_val_bpb=3.15)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    expect(page.locator("#chart-note")).to_contain_text("2 extrapolated")
    ringed = page.evaluate("window.bilevelRunPage.chart.data.datasets[8].data.map((p) => p.x)")
    assert ringed == [1, 3]
    legend = page.evaluate("window.bilevelRunPage.chart.legend.legendItems.map((item) => item.text)")
    assert "extrapolated (outside the measured support)" in legend
    expect(page.locator("#latest-iteration")).to_contain_text("extrapolated")
    rows = page.locator("#iteration-table tr[data-index] .tag.extrapolated")
    expect(rows).to_have_count(2)
    expect(page.locator("#iteration-table tr[data-index='1'] .tag.extrapolated")).to_have_attribute(
        "title", "outside the surrogate's measured support: no better than the measured configs nearest to it "
                 "(they gave 2.9500); distance 2.400")
    shot(page, "run-page-extrapolated")


def test_the_form_shows_the_cost_of_real_confirmation(asgi_server: LiveServer, users: Any, page: Any) -> None:
    log_in(page, asgi_server, "plain")
    page.goto(asgi_server.url + "/experiments/new/")
    cost = page.locator("#real-confirmation-cost")
    page.check("input[name=objective][value=surrogate]")
    expect(cost).to_be_visible()
    # Default groups A, B, C × 1 repeat, r = 2 by default: 3 runs × 4 trainings, a minute each.
    expect(cost).to_contain_text("3 runs × 4 real trainings = 12 trainings × about 1.0 min ≈ 12 min")
    page.fill("#id_repeats", "10")
    page.fill("#id_real_confirmation_repeats", "3")
    expect(cost).to_contain_text("30 runs × 6 real trainings = 180 trainings × about 1.0 min ≈ 180 min")
    page.fill("#id_budget_value", "3e12")  # twice the default FLOP budget: twice as long per training
    expect(cost).to_contain_text("× about 2.0 min ≈ 360 min")
    page.fill("#id_real_confirmation_repeats", "0")
    expect(cost).to_contain_text("No real confirmation")
    page.check("input[name=objective][value=trainer]")
    expect(page.locator("#real-confirmation-field")).to_be_hidden()
    shot(page, "form-real-confirmation-cost")
