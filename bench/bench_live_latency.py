"""live_latency: from a worker publishing an iteration event to the run page's DOM showing it.

Real Chromium (Playwright) on the run page of the real ASGI server (daphne) with the Redis
channel layer. A publisher thread records an Iteration row, takes the wall-clock time and calls
runs.engine.events.publish_run_event exactly as a worker does; in the page a MutationObserver on
#latest-iteration stamps Date.now() when the iteration's text lands in the DOM, and again at the
next animation frame (painted). Same host, same clock. Options: events=200, spacing_ms=100.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench_common import BenchEnv, Report, make_user, percentile, summary_stats

OBSERVER = """
() => {
  window.__seen = {};
  window.__painted = {};
  const target = document.getElementById("latest-iteration");
  new MutationObserver(() => {
    const now = Date.now();
    const match = /^#(\\d+) /.exec(target.textContent);
    if (!match || match[1] in window.__seen) return;
    const index = match[1];
    window.__seen[index] = now;
    requestAnimationFrame(() => { window.__painted[index] = Date.now(); });
  }).observe(target, { childList: true, characterData: true, subtree: true });
}
"""


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    from playwright.sync_api import sync_playwright

    from runs.models import Experiment, Iteration, Run

    events = int(options.get("events", 200))
    spacing = float(options.get("spacing_ms", 100)) / 1000
    user = make_user()
    phases = [(f"paced ({spacing * 1000:g} ms apart)", spacing), ("burst (back to back)", 0.0)]
    experiment = Experiment.objects.create(name="live latency", groups=["A"], iterations=events * len(phases) + 1,
                                           objective="surrogate", created_by=user)
    run_row = Run.objects.create(experiment=experiment, group="A", repeat=1, status="running",
                                 baseline_val_bpb=3.0, best_val_bpb=3.0)
    Iteration.objects.create(run=run_row, index=0, kind="baseline", status="baseline", val_bpb=3.0,
                             hypothesis="baseline")
    _server, url = env.start_asgi()
    results: list[list[Any]] = []
    publish_costs: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/accounts/login/")
        page.fill("input[name=username]", "bench")
        page.fill("input[name=password]", "bench-password-42")
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/")
        page.goto(f"{url}/runs/{run_row.pk}/")
        page.wait_for_function("document.getElementById('live-indicator').textContent === 'live'")
        page.evaluate(OBSERVER)
        next_index = 1
        for label, gap in phases:
            indexes = list(range(next_index, next_index + events))
            next_index += events
            sent: dict[int, float] = {}
            thread = threading.Thread(target=publish_all, args=(run_row.pk, indexes, gap, sent, publish_costs))
            thread.start()
            page.wait_for_function(
                f"[{indexes[0]}, {indexes[-1]}].every(i => i in window.__painted) && "
                f"Object.keys(window.__painted).length >= {next_index - 1}", timeout=120_000)
            thread.join()
            seen: dict[str, float] = page.evaluate("window.__seen")
            painted: dict[str, float] = page.evaluate("window.__painted")
            dom = [seen[str(i)] - sent[i] for i in indexes if str(i) in seen]
            paint = [painted[str(i)] - sent[i] for i in indexes if str(i) in painted]
            results.append([label, len(dom), *summary_stats(dom)[:2], max(dom), *summary_stats(paint)[:2]])
        browser.close()
    paced_p95 = results[0][3]
    costs_ms = [c * 1000 for c in publish_costs]
    return Report(
        name="live_latency",
        title="live_latency: worker event → run page DOM (Chromium)",
        command=f"python3 bootstrap.py bench live_latency events={events} spacing_ms={spacing * 1000:g}",
        setup=(f"{events} iteration events per phase on one run page; daphne + Redis channel layer; latency = "
               "DOM mutation (or next animation frame) time in the page − wall time just before publish_run_event, "
               "same host clock (1 ms resolution)."),
        headers=["phase", "events", "DOM p50 ms", "DOM p95 ms", "DOM max ms", "painted p50 ms", "painted p95 ms"],
        rows=results,
        targets=[(f"p95 ≤ 250 ms (paced): measured {paced_p95:.0f} ms", paced_p95 <= 250)],
        notes=[f"publish_run_event itself (the worker's cost per event): median {percentile(costs_ms, 50):.1f} ms, "
               f"p95 {percentile(costs_ms, 95):.1f} ms."],
    )


def publish_all(run_id: int, indexes: list[int], gap: float, sent: dict[int, float], costs: list[float]) -> None:
    from django.db import connection

    from runs.engine.events import IterationEvent, publish_run_event
    from runs.models import Iteration
    from runs.serializers import iteration_to_dict

    try:
        for index in indexes:
            row = Iteration.objects.create(run_id=run_id, index=index, kind="proposal", status="discard",
                                           val_bpb=3.0 + index * 1e-4, best_before=3.0, hypothesis=f"event {index}",
                                           changes={"MATRIX_LR": {"old": 0.01, "new": 0.01 + index * 1e-5}})
            event: IterationEvent = {"type": "iteration", "run": run_id, "iteration": iteration_to_dict(row)}
            sent[index] = time.time() * 1000
            started = time.perf_counter()
            publish_run_event(run_id, event)
            costs.append(time.perf_counter() - started)
            if gap:
                time.sleep(gap)  # pacing the load, not synchronisation
    finally:
        connection.close()
