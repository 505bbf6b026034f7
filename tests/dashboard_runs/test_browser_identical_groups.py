"""Two groups with identical results stay visible and distinguished on the comparison chart and
in the HTML report, and their "difference 0, p = 1" row says why."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_identical_groups_are_both_visible_and_explained(asgi_server: LiveServer, users: Any, page: Any) -> None:
    experiment = make_experiment(users.plain, name="twins", groups=["A", "C"], repeats=2, iterations=2)
    for group in ("A", "C"):
        for repeat in (1, 2):
            run = make_run(experiment, group, repeat, status="completed", baseline_val_bpb=2.70,
                           best_val_bpb=2.60 - repeat / 100, proposals_done=2)
            make_iteration(run, 0, val_bpb=2.70)
            make_iteration(run, 1, status="keep", val_bpb=2.60 - repeat / 100, best_before=2.70)
            make_iteration(run, 2, val_bpb=2.69, best_before=2.60 - repeat / 100)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/experiments/{experiment.pk}/compare/")
    page.wait_for_selector("#compare-chart[data-ready='1']", state="attached")

    lines = page.evaluate("""() => Chart.getChart(document.getElementById('compare-chart')).data.datasets
        .filter((d) => !d.isBand && !d.isRepeat)
        .map((d) => ({label: d.label, dash: d.borderDash, radius: d.pointRadius}))""")
    by_label = {line["label"]: line for line in lines}
    first, second = "A: Level 1", "C: Level 1 + 1.5 + 2 (same as A)"
    assert set(by_label) == {first, second}, lines
    assert by_label[first]["dash"] == [] and by_label[first]["radius"] == 0
    assert by_label[second]["dash"] == [2, 3] and by_label[second]["radius"] > 0
    expect(page.locator("ul.notes")).to_contain_text("C has exactly the same running-best curve as A")
    pair_row = page.locator("tr").filter(has_text="A: Level 1 − C").first
    expect(pair_row).to_contain_text("no difference to test, hence p = 1")
    shot(page, "comparison-identical-groups")

    # What a budget buys: the same running bests against the seconds each run has spent.
    page.check("#chart-toggles input[name=xseconds]")
    page.wait_for_selector("#compare-chart[data-x='seconds']", state="attached")
    first = page.evaluate("""() => Chart.getChart(document.getElementById('compare-chart')).data.datasets[0]
        .data.map((p) => p.x)""")
    assert first == [10.0, 21.0, 33.0]  # baseline 10 s, then proposals of 11 s and 12 s

    report = page.request.get(f"{asgi_server.url}/experiments/{experiment.pk}/report.html").text()
    assert "(= A)" in report and 'stroke-dasharray="2 3"' in report
    assert "no difference to test" in report
