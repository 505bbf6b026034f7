"""Clone-and-edit and the config diff page, in a real browser against the real ASGI server."""

from __future__ import annotations

from typing import Any

import pytest

from runs.models import Experiment
from tests.conftest import LiveServer, log_in

from .conftest import make_experiment, make_iteration, make_run
from .test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]
COPIED = ["groups", "repeats", "iterations", "strategy_interval", "research_interval", "objective", "preset",
          "budget_kind", "budget_value", "seed_base", "threads", "agent_backend", "acceptance_policy", "noise_k",
          "baseline_repeats", "review_gate", "description"]


def test_clone_and_edit_then_config_diff(asgi_server: LiveServer, users: Any, page: Any) -> None:
    """One server and one login for both views (browser tests pay seconds for each)."""
    log_in(page, asgi_server, "plain")
    clone_and_edit_creates_a_new_experiment_with_the_same_settings(asgi_server, users, page)
    config_diff_between_two_iterations_and_a_run(asgi_server, users, page)


def clone_and_edit_creates_a_new_experiment_with_the_same_settings(
    asgi_server: LiveServer, users: Any, page: Any
) -> None:
    original = make_experiment(users.plain, name="sweep", groups=["A", "C"], repeats=2, iterations=7,
                               strategy_interval=3, objective="surrogate", budget_value=2e12, seed_base=40,
                               acceptance_policy="noise_aware", noise_k=1.5, review_gate=False,
                               description="the first try")
    page.goto(f"{asgi_server.url}/experiments/{original.pk}/")
    page.click("#clone-experiment")
    expect(page.locator("#clone-note")).to_contain_text("copied from")
    expect(page.locator("input[name=name]")).to_have_value("sweep (copy)")
    shot(page, "clone-and-edit")
    page.fill("input[name=name]", "sweep, more iterations")
    page.fill("input[name=iterations]", "9")
    page.click("form.experiment-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("sweep, more iterations")

    clone = Experiment.objects.get(name="sweep, more iterations")
    assert clone.pk != original.pk and clone.iterations == 9
    for field in COPIED:
        if field != "iterations":
            assert getattr(clone, field) == getattr(original, field), field
    assert clone.runs.count() == 4
    assert Experiment.objects.get(pk=original.pk).iterations == 7  # the original is untouched


def config_diff_between_two_iterations_and_a_run(asgi_server: LiveServer, users: Any, page: Any) -> None:
    experiment = make_experiment(users.plain, name="diffs", groups=["A"])
    run = make_run(experiment, "A", best_iteration=1, best_val_bpb=2.6, baseline_val_bpb=2.7)
    base = {"DEPTH": 4, "MATRIX_LR": 0.04, "WARMDOWN_RATIO": 0.5}
    make_iteration(run, 0, config=base)
    make_iteration(run, 1, status="keep", val_bpb=2.6, config={**base, "MATRIX_LR": 0.08})
    make_iteration(run, 2, config={**base, "DEPTH": 6, "WARMDOWN_RATIO": 0.3})

    # From the iteration table's "diff" link: baseline against iteration 2.
    page.goto(f"{asgi_server.url}/runs/{run.pk}/iterations/")
    page.locator("tr[data-index='2'] a.diff-link").click()
    expect(page.locator("#diff-summary")).to_contain_text("2 of 3 settings differ")
    changed = page.locator("#config-diff tr.changed td:first-child")
    expect(changed).to_have_text(["DEPTH", "WARMDOWN_RATIO"])
    shot(page, "config-diff")

    # A run (its best iteration) against an iteration, typed into the form.
    page.fill("input[name=a]", str(run.pk))
    page.fill("input[name=b]", f"{run.pk}.2")
    page.click("#diff-form button[type=submit]")
    expect(page.locator("#config-diff thead")).to_contain_text("iteration #1")
    expect(page.locator("#config-diff tr.changed td:first-child")).to_have_text(["DEPTH", "MATRIX_LR",
                                                                                 "WARMDOWN_RATIO"])
    page.fill("input[name=a]", "nonsense")
    page.click("#diff-form button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("is not RUN or RUN.ITERATION")
