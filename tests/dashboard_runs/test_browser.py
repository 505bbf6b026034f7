"""The dashboard in a real browser against the real ASGI server: the create form, the live run
page fed by published events (and caught up from a snapshot after a reconnect), HTMX filters,
run controls and CSV downloads. Synchronisation is Playwright's auto-waiting, never sleeps."""

from __future__ import annotations

import csv
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mechanisms.models import Mechanism, MechanismAttachment
from runs.engine import events
from runs.models import Experiment, Iteration, Run
from runs.serializers import iteration_to_dict
from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run

pytestmark = [pytest.mark.browser, pytest.mark.services]

XSS = "<img src=x onerror=alert(1)>"
# Pictures of test fixtures, for looking at a failure; docs/screenshots comes from docs/make_screenshots.py.
SHOTS = Path(os.environ.get("BILEVEL_SCREENSHOTS", "/tmp/shots"))

# Keep every WebSocket the page opens reachable, so a test can drop one and watch the page reconnect.
RECORD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = function (...args) { const s = new Native(...args); window.__sockets.push(s); return s; };
  window.WebSocket.prototype = Native.prototype;
})();
"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    # Playwright's 5 s default is short on a loaded 2-core machine; match the page's 20 s.
    playwright_expect.set_options(timeout=20_000)
    return playwright_expect(locator)


def fail_on_dialog(page: Any) -> list[str]:
    dialogs: list[str] = []

    def record(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    return dialogs


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def publish_run_event(run_id: int, event: events.RunEvent) -> None:
    """Publish as a worker does. Playwright's loop owns this thread, so send from another one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(events.publish_run_event, run_id, event).result()


def publish_iteration(iteration: Iteration) -> None:
    publish_run_event(iteration.run_id, {"type": "iteration", "run": iteration.run_id,
                                         "iteration": iteration_to_dict(iteration)})


def live_run(users: Any) -> Run:
    experiment = make_experiment(users.plain, name="live page", groups=["B"], iterations=5, strategy_interval=2)
    run = make_run(experiment, "B", status="running", level_strategy=True, baseline_val_bpb=2.70, noise_sd=0.02,
                   best_val_bpb=2.70)
    make_iteration(run, 0, val_bpb=2.70)
    return run


def test_create_an_experiment_through_the_form(asgi_server: LiveServer, users: Any, page: Any) -> None:
    log_in(page, asgi_server, "plain")
    page.click("text=New experiment")
    page.wait_for_url(re.compile(r"/experiments/new/$"))
    expect(page.locator("#id_llm_base_url")).to_be_hidden()  # built-in agent: no LLM fields
    page.check("input[name=agent_backend][value=llm]")
    expect(page.locator("#id_llm_base_url")).to_be_visible()
    page.check("input[name=agent_backend][value=builtin]")

    # Invalid first: K > T. Nothing is created and the field says why.
    page.fill("#id_name", "browser ablation")
    page.fill("#id_iterations", "3")
    page.fill("#id_strategy_interval", "4")
    page.check("input[name=objective][value=surrogate]")
    page.click("button:has-text('Create and start')")
    expect(page.locator(".has-error", has_text="K must not exceed T")).to_be_visible()
    assert Experiment.objects.count() == 0

    page.fill("#id_strategy_interval", "2")
    page.uncheck("input[name=groups][value=C]")
    page.fill("#id_repeats", "2")
    shot(page, "experiment_form")
    page.click("button:has-text('Create and start')")
    page.wait_for_url(re.compile(r"/experiments/\d+/$"))
    expect(page.locator("h1")).to_have_text("browser ablation")
    expect(page.locator(".tag.surrogate").first).to_be_visible()
    experiment = Experiment.objects.get()
    assert experiment.objective == "surrogate" and experiment.groups == ["A", "B"]
    assert sorted(experiment.runs.values_list("group", "repeat")) == [("A", 1), ("A", 2), ("B", 1), ("B", 2)]
    expect(page.locator("table.runs tbody tr")).to_have_count(4)
    shot(page, "experiment_page")

    page.goto(asgi_server.url + "/")
    row = page.locator("table.experiments tr", has_text="browser ablation")
    expect(row).to_contain_text("built-in heuristic (no LLM)")
    expect(row).to_contain_text("Surrogate")
    shot(page, "experiments_list")


def test_live_run_page_grows_with_events_and_keeps_text_as_text(
    asgi_server: LiveServer, users: Any, page: Any
) -> None:
    run = live_run(users)
    dialogs = fail_on_dialog(page)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    expect(page.locator("#live-indicator")).to_have_text("live")
    expect(page.locator("#iteration-table tbody tr[data-index]")).to_have_count(1)
    assert page.evaluate("window.bilevelRunPage.chart.data.datasets[2].data.length") == 1  # the baseline

    # Training progress draws the live curve.
    for step, loss in ((1, 5.5), (2, 4.9), (3, 4.4)):
        publish_run_event(run.pk, {"type": "progress", "run": run.pk, "iteration": 1, "step": step,
                                   "tokens": 4096 * step, "train_loss": loss, "lr": 0.01, "elapsed": 2.0 * step,
                                   "budget_fraction": step / 10})
    page.wait_for_function("window.bilevelRunPage.curveChart.data.datasets[0].data.length === 3")
    expect(page.locator("#progress-training-text")).to_contain_text("step 3")
    expect(page.locator("#curve-title")).to_contain_text("iteration #1 (live)")

    # A recorded iteration (hostile hypothesis) grows the chart and the table without a reload.
    iteration = make_iteration(run, 1, status="discard", val_bpb=2.74, best_before=2.70, hypothesis=XSS,
                               changes={"DEPTH": {"old": 4, "new": 5}})
    publish_iteration(iteration)
    page.wait_for_function("window.bilevelRunPage.chart.data.datasets[1].data.length === 1")
    row = page.locator("#iteration-table tbody tr[data-index='1']")
    expect(row).to_be_visible()
    expect(row.locator("td.hypothesis")).to_have_text(XSS)
    expect(page.locator("#latest-iteration")).to_contain_text(XSS)
    expect(page.locator("#progress-proposals-text")).to_have_text("1 of 5")

    keep = make_iteration(run, 2, status="keep", val_bpb=2.61, best_before=2.70, hypothesis="lower LR")
    publish_iteration(keep)
    page.wait_for_function("window.bilevelRunPage.chart.data.datasets[0].data.length === 1")
    best_line = page.evaluate("window.bilevelRunPage.chart.data.datasets[4].data.map(p => p.y)")
    assert best_line == [2.70, 2.70, 2.61]
    crash = make_iteration(run, 3, status="crash", val_bpb=None, best_before=2.61, failure_class="diverged",
                           hypothesis="huge LR")
    publish_iteration(crash)
    page.wait_for_function("window.bilevelRunPage.chart.data.datasets[3].data.length === 1")
    expect(page.locator("#chart-note")).to_contain_text("1 crashed or invalid iteration")
    expect(page.locator("#iteration-table tbody tr[data-index]")).to_have_count(4)

    # Level 1.5 and mechanism panels, with hostile strings.
    run.outer_cycles.create(index=1, after_iteration=2, frozen=["DEPTH"], newly_frozen=["DEPTH"], guidance=XSS,
                            reasons={"DEPTH": XSS})
    publish_run_event(run.pk, {"type": "outer_cycle", "run": run.pk, "cycle": {
        "run": run.pk, "index": 1, "after_iteration": 2, "frozen": ["DEPTH"], "newly_frozen": ["DEPTH"],
        "unfrozen": [], "guidance": XSS, "strategy": "", "reasons": {"DEPTH": XSS}}})
    expect(page.locator("#outer-cycles td.guidance")).to_have_text(XSS)
    expect(page.locator("#frozen-grid td.frozen")).to_have_text("+")  # DEPTH, newly frozen in cycle 1

    # A mechanism becomes active: the row appears (from the snapshot the event triggers), flagged inert.
    mechanism = Mechanism.objects.create(code_hash="c0ffee", name=XSS, code="", origin="llm")
    attachment = MechanismAttachment.objects.create(run=run, mechanism=mechanism, status="active",
                                                    hook_calls={"propose": 3, "filter": 5}, decisions_changed=0)
    publish_run_event(run.pk, {"type": "mechanism", "run": run.pk, "attachment": attachment.pk, "name": XSS,
                               "status": "active", "note": "activated at iteration 3"})
    mechanism_row = page.locator(f"#attachments tr[data-attachment='{attachment.pk}']")
    expect(mechanism_row).to_contain_text("filter 5, propose 3")
    expect(mechanism_row.locator(".tag.inert")).to_have_text("inert")
    expect(mechanism_row.locator("a")).to_have_text(XSS)
    assert mechanism_row.locator("a").get_attribute("href") == f"/mechanisms/{attachment.pk}/"

    publish_run_event(run.pk, {"type": "status", "run": run.pk, "status": "paused", "detail": "paused by a user"})
    expect(page.locator("#run-status")).to_have_text("Paused")
    expect(page.locator("#run-controls button", has_text="Resume")).to_be_visible()
    expect(page.locator("#run-controls button", has_text="Pause")).to_be_hidden()

    assert page.locator("img").count() == 0
    assert dialogs == []
    shot(page, "run_page_live")


def test_reconnecting_page_catches_up_from_the_snapshot(asgi_server: LiveServer, users: Any, page: Any) -> None:
    run = live_run(users)
    page.add_init_script(RECORD_SOCKETS)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    expect(page.locator("#live-indicator")).to_have_text("live")

    page.evaluate("window.__sockets[window.__sockets.length - 1].close()")
    expect(page.locator("#live-indicator")).to_have_text("reconnecting…")
    # Recorded while the page was offline, and never published: only the database has it.
    make_iteration(run, 1, status="keep", val_bpb=2.65, best_before=2.70, hypothesis="missed while offline")
    Run.objects.filter(pk=run.pk).update(
        live_progress={"iteration": 2, "points": [[1, 5.0], [2, 4.5]], "step": 2, "budget_fraction": 0.4,
                       "elapsed": 8.0})
    expect(page.locator("#live-indicator")).to_have_text("live")
    page.wait_for_function("window.bilevelRunPage.chart.data.datasets[0].data.length === 1")
    page.wait_for_function("window.bilevelRunPage.curveChart.data.datasets[0].data.length === 2")
    expect(page.locator("#iteration-table tbody tr[data-index='1']")).to_contain_text("missed while offline")
    expect(page.locator("#progress-training-text")).to_contain_text("40% of budget")


def test_pause_button_and_transition_error(asgi_server: LiveServer, users: Any, page: Any) -> None:
    run = live_run(users)
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    expect(page.locator("#live-indicator")).to_have_text("live")
    page.click("#run-controls button:has-text('Pause')")
    expect(page.locator("#run-status")).to_have_text("Paused")
    expect(page.locator("#run-controls button", has_text="Resume")).to_be_visible()
    # The worker finished the run meanwhile: a late Cancel gets the transition error, not a crash.
    Run.objects.filter(pk=run.pk).update(status="completed")
    page.click("#run-controls button:has-text('Cancel')")
    expect(page.locator("#run-controls .error")).to_contain_text("is completed; cannot go to cancelled")
    assert Run.objects.get(pk=run.pk).status == "completed"


def test_filter_the_table_and_download_exactly_that(asgi_server: LiveServer, users: Any, page: Any) -> None:
    run = live_run(users)
    for index, status in ((1, "keep"), (2, "discard"), (3, "keep"), (4, "crash")):
        make_iteration(run, index, status=status, val_bpb=None if status == "crash" else 2.7 - index / 100,
                       hypothesis=f"idea {index}" + (f" {XSS}" if index == 3 else ""))
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/iterations/")
    expect(page.locator("tbody tr[data-index]")).to_have_count(5)
    page.check("input[name=status][value=keep]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(2)
    page.wait_for_url(re.compile(r"status=keep"))  # the URL reflects the filter (linkable)
    expect(page.locator("td.hypothesis", has_text="idea 3")).to_contain_text(XSS)
    page.click("th a:has-text('val_bpb')")
    expect(page.locator("tbody tr[data-index]").first).to_have_attribute("data-index", "3")
    shot(page, "iteration_table")

    with page.expect_download() as download_info:
        page.click("a.export-csv")
    download = download_info.value
    assert download.suggested_filename == f"run-{run.pk}-iterations.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert [(r["index"], r["status"]) for r in rows] == [("3", "keep"), ("1", "keep")]
    assert rows[0]["hypothesis"] == f"idea 3 {XSS}"

    page.reload()  # the linkable URL reproduces the same table
    expect(page.locator("tbody tr[data-index]")).to_have_count(2)


def test_an_outlier_does_not_flatten_the_chart(asgi_server: LiveServer, users: Any, page: Any) -> None:
    run = live_run(users)
    make_iteration(run, 1, status="keep", val_bpb=2.66, best_before=2.70)
    make_iteration(run, 2, status="discard", val_bpb=8.0, best_before=2.66, hypothesis="diverging config")
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    expect(page.locator("#chart-note")).to_contain_text("1 value above the axis")
    cap = page.evaluate("window.bilevelRunPage.chart.options.scales.y.max")
    assert 2.70 < cap < 3.0
    # The tooltip still tells the real value.
    assert page.evaluate("window.bilevelRunPage.chart.data.datasets[1].data[0].it.val_bpb") == 8.0
