"""A whole run through the real stack: created with the form, stepped by a Celery worker (built-in
agent; surrogate, or the real trainer on a tiny budget), watched live in the browser until it completes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from runs.models import Experiment, Run
from tests.conftest import LiveServer, ServiceProcess, log_in

from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


@pytest.mark.parametrize(
    "objective",
    ["surrogate", pytest.param("trainer", marks=pytest.mark.slow)],
)
def test_run_created_in_the_form_is_watched_to_completion(
    asgi_server: LiveServer, celery_worker: ServiceProcess, users: Any, page: Any, objective: str
) -> None:
    from trainer.surrogate import MEASUREMENTS_PATH

    if objective == "surrogate" and not MEASUREMENTS_PATH.exists():
        pytest.skip(f"the surrogate's measurements are not collected yet ({MEASUREMENTS_PATH})")
    log_in(page, asgi_server, "plain")
    page.goto(asgi_server.url + "/experiments/new/")
    page.fill("#id_name", "end to end")
    page.uncheck("input[name=groups][value=A]")
    page.uncheck("input[name=groups][value=C]")
    page.fill("#id_iterations", "2")
    page.fill("#id_strategy_interval", "1")
    page.check(f"input[name=objective][value={objective}]")
    page.fill("#id_budget_value", "3e11")  # ~13 optimizer steps: seconds of real training on the CPU
    if objective == "surrogate":  # watched live here; real confirmation has tests of its own
        page.fill("#id_real_confirmation_repeats", "0")
    page.click("button:has-text('Create and start')")
    page.wait_for_url(re.compile(r"/experiments/\d+/$"))
    run = Run.objects.get(experiment=Experiment.objects.get())

    page.click(f"a[href='/runs/{run.pk}/']")
    expect(page.locator("#live-indicator")).to_have_text("live")
    expect(page.locator("#run-status")).to_have_text(re.compile("Completed|Failed|Cancelled"), timeout=240_000)
    run.refresh_from_db()
    assert run.status == "completed", f"{run.status}: {run.status_detail}\n{celery_worker.output()[-3000:]}"
    expect(page.locator("#run-status")).to_have_text("Completed")
    # Everything the worker recorded is on the page without a reload.
    recorded = run.iteration_set.count()
    page.wait_for_function(
        "n => { const d = window.bilevelRunPage.chart.data.datasets;"
        " return d[0].data.length + d[1].data.length + d[2].data.length + d[3].data.length === n; }",
        arg=recorded,
    )
    expect(page.locator("#iteration-table tbody tr[data-index]")).to_have_count(recorded)
    expect(page.locator("#progress-proposals-text")).to_have_text("2 of 2")
    expect(page.locator("#outer-cycles tr")).to_have_count(run.outer_cycles.count())
    shot(page, f"run_page_completed_{objective}")
