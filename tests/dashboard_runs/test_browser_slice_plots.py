"""Slice plots above the iteration tables: one panel per parameter that varies (numeric or
categorical), one point per filtered iteration with a val_bpb, coloured by group, redrawn from
exactly what the table's filter selects (and from the filtered URL on reload)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]

CONFIGS = [  # (status, val_bpb, config); the crash has no val_bpb and no point
    ("baseline", 2.70, {"DEPTH": 4, "MATRIX_LR": 0.002, "WINDOW_PATTERN": "SSSL", "ASPECT": 64}),
    ("keep", 2.60, {"DEPTH": 6, "MATRIX_LR": 0.002, "WINDOW_PATTERN": "L", "ASPECT": 64}),
    ("discard", 2.65, {"DEPTH": 6, "MATRIX_LR": 0.2, "WINDOW_PATTERN": "SSSL", "ASPECT": 64}),
    ("crash", None, {"DEPTH": 99, "MATRIX_LR": 9.0, "WINDOW_PATTERN": "LL", "ASPECT": 64}),
]


def populate(users: Any) -> Any:
    experiment = make_experiment(users.plain, name="slices", groups=["A", "C"], iterations=3)
    for group, shift in (("A", 0.0), ("C", -0.03)):
        run = make_run(experiment, group, baseline_val_bpb=2.7 + shift)
        for index, (status, val_bpb, config) in enumerate(CONFIGS):
            make_iteration(run, index, status=status, val_bpb=None if val_bpb is None else val_bpb + shift,
                           config=config)
    return experiment


def test_slice_plots_follow_the_experiment_table_filter(asgi_server: LiveServer, users: Any, page: Any) -> None:
    experiment = populate(users)
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/experiments/{experiment.pk}/iterations/")

    panels = page.locator("#slices svg.slice-panel")
    expect(panels).to_have_count(3)  # ASPECT does not vary
    expect(panels.first).to_be_visible()
    expect(page.locator("#slices .slice-title")).to_have_text(["DEPTH", "MATRIX_LR (log)", "WINDOW_PATTERN"])
    expect(page.locator("#slices .slice-panel[data-kind=categorical] .slice-xtick")).to_have_text(["L", "SSSL"])
    expect(page.locator("#slices-note")).to_contain_text("Constant among them, so not plotted: ASPECT = 64")
    expect(page.locator("#slices-note")).to_contain_text("lower val_bpb is better")
    for name in ("DEPTH", "MATRIX_LR", "WINDOW_PATTERN"):  # every iteration with a val_bpb, in every panel
        expect(page.locator(f"#slices .slice-panel[data-param={name}] .slice-point")).to_have_count(6)
    points = page.locator("#slices .slice-panel[data-param=DEPTH] .slice-point")
    expect(page.locator("#slices-legend .slice-legend-item")).to_have_text(["A: Level 1", "C: Level 1 + 1.5 + 2"])
    colour_a = page.locator("#slices .slice-point[data-group=A] >> nth=0").get_attribute("stroke")
    colour_c = page.locator("#slices .slice-point[data-group=C] >> nth=0").get_attribute("stroke")
    assert colour_a and colour_c and colour_a != colour_c
    legend_c = page.locator("#slices-legend .slice-legend-item[data-group=C] .slice-swatch")
    assert page.evaluate("c => getComputedStyle(c).backgroundColor", legend_c.element_handle()) == rgb(colour_c)
    expect(page.locator("#slices .slice-point.kept")).to_have_count(2 * 3)  # one kept per run, per panel
    expect(page.locator("#slices .slice-baseline")).to_have_count(0)  # two runs: no single baseline
    expect(points.first.locator("title")).to_contain_text("val_bpb = ")
    shot(page, "slice-plots-experiment")

    page.check("input[name=group][value=C]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(4)
    expect(points).to_have_count(3)
    expect(page.locator("#slices .slice-point[data-group=A]")).to_have_count(0)
    expect(page.locator("#slices .slice-baseline")).to_have_count(3)  # one run left: its baseline in each panel
    page.check("input[name=status][value=discard]")
    page.check("input[name=status][value=keep]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(2)
    # Two iterations: DEPTH is 6 in both, so only MATRIX_LR and WINDOW_PATTERN vary.
    expect(page.locator("#slices .slice-title")).to_have_text(["MATRIX_LR (log)", "WINDOW_PATTERN"])
    expect(page.locator("#slices-note")).to_contain_text("2 iterations with a val_bpb")
    expect(page.locator("#slices-note")).to_contain_text("DEPTH = 6")
    expect(page.locator("#slices .slice-panel[data-param=MATRIX_LR] .slice-point")).to_have_count(2)
    page.reload()  # the linkable filtered URL draws the same plots
    expect(page.locator("#slices .slice-title")).to_have_text(["MATRIX_LR (log)", "WINDOW_PATTERN"])
    expect(page.locator("#slices .slice-panel[data-param=WINDOW_PATTERN] .slice-point")).to_have_count(2)
    expect(page.locator("#slices .slice-point[data-group=A]")).to_have_count(0)


def test_slice_plots_on_a_run_page_show_its_baseline(asgi_server: LiveServer, users: Any, page: Any) -> None:
    run = populate(users).runs.get(group="A")
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/runs/{run.pk}/iterations/")
    expect(page.locator("#slices svg.slice-panel")).to_have_count(3)
    expect(page.locator("#slices .slice-panel[data-param=DEPTH] .slice-point")).to_have_count(3)
    expect(page.locator("#slices .slice-baseline")).to_have_count(3)
    expect(page.locator("#slices-note")).to_contain_text("dashed line = the run's baseline")
    shot(page, "slice-plots-run")
    page.check("input[name=status][value=keep]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(1)
    expect(page.locator("#slices svg.slice-panel")).to_have_count(0)  # one point: nothing varies
    expect(page.locator("#slices-note")).to_contain_text("No parameter varies among them.")


def rgb(hex_colour: str) -> str:
    value = hex_colour.lstrip("#")
    return "rgb({}, {}, {})".format(*(int(value[i:i + 2], 16) for i in (0, 2, 4)))
