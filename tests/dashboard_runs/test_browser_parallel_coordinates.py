"""Parallel coordinates above the experiment's iteration table: drawn from the iterations, and
redrawn from exactly what the table's filter selects."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_parallel_coordinates_follow_the_table_filter(asgi_server: LiveServer, users: Any, page: Any) -> None:
    experiment = make_experiment(users.plain, name="search", groups=["A", "C"], iterations=3)
    for group in ("A", "C"):
        run = make_run(experiment, group, baseline_val_bpb=2.7)
        make_iteration(run, 0, val_bpb=2.7, config={"DEPTH": 4, "MATRIX_LR": 0.04, "ASPECT": 64})
        make_iteration(run, 1, status="keep", val_bpb=2.6, config={"DEPTH": 6, "MATRIX_LR": 0.04, "ASPECT": 64})
        make_iteration(run, 2, val_bpb=2.65, config={"DEPTH": 6, "MATRIX_LR": 0.2, "ASPECT": 64})
        make_iteration(run, 3, status="crash", val_bpb=None, config={"DEPTH": 99, "MATRIX_LR": 9.0, "ASPECT": 64})
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/experiments/{experiment.pk}/iterations/")

    lines = page.locator("#parcoords polyline.pc-line")
    expect(lines).to_have_count(6)  # every iteration with a val_bpb; the crash has none
    # Axes: the parameters that vary (ASPECT does not), then val_bpb.
    expect(page.locator("#parcoords text.pc-axis")).to_have_text(["DEPTH", "MATRIX_LR", "val_bpb"])
    # The group filter offers this experiment's groups only, labelled.
    expect(page.locator("input[name=group]")).to_have_count(2)
    expect(page.locator("label.check", has_text="C: Level 1 + 1.5 + 2")).to_have_count(1)
    shot(page, "parallel-coordinates")

    page.check("input[name=group][value=C]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(4)
    expect(lines).to_have_count(3)
    page.check("input[name=status][value=keep]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(1)
    expect(lines).to_have_count(1)
    expect(page.locator("#parcoords-note")).to_contain_text("1 iteration with a val_bpb")
    page.reload()  # the linkable filtered URL draws the same plot
    expect(lines).to_have_count(1)


def test_the_last_filter_change_wins_while_an_earlier_request_is_in_flight(
    asgi_server: LiveServer, users: Any, page: Any
) -> None:
    """Two quick ticks: the first request is held by the network until the second one is sent. The
    table must end up showing both ticks (the earlier request is replaced), never only the first."""
    experiment = make_experiment(users.plain, name="quick", groups=["A"], iterations=3)
    run = make_run(experiment, "A", baseline_val_bpb=2.7)
    make_iteration(run, 0, val_bpb=2.7, config={"DEPTH": 4})
    make_iteration(run, 1, status="keep", val_bpb=2.6, config={"DEPTH": 6})
    make_iteration(run, 2, status="discard", val_bpb=2.65, config={"DEPTH": 8})
    make_iteration(run, 3, status="crash", val_bpb=None, config={"DEPTH": 99})
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/experiments/{experiment.pk}/iterations/")
    expect(page.locator("tbody tr[data-index]")).to_have_count(4)

    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        held.append(route)
        if len(held) == 1:
            return  # the first filter request stays on the wire until the second is sent
        route.continue_()
        with contextlib.suppress(Exception):  # the page may have aborted it already
            held[0].continue_()

    page.route("**/iterations/?*", hold_the_first)
    page.check("input[name=status][value=discard]")
    page.check("input[name=status][value=keep]")
    expect(page.locator("tbody tr[data-index]")).to_have_count(2)
    expect(page.locator("input[name=status][value=discard]")).to_be_checked()
    expect(page.locator("input[name=status][value=keep]")).to_be_checked()
    expect(page.locator("#parcoords polyline.pc-line")).to_have_count(2)
