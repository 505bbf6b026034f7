"""Regenerate docs/screenshots/ from real runs: the demo on the real trainer and a surrogate ablation.

    .venv/bin/python docs/make_screenshots.py [--repeats 10] [--iterations 30]

In a private environment (an embedded redis-server, a fresh SQLite database, the ASGI server, one
train and one research Celery worker; see bench/bench_common.py) it
1. starts the demo experiment (`manage.py start_demo`: group C, built-in agent, the real trainer on
   cpu-tiny) and photographs its run page once the baseline training has streamed a few progress
   points (run-page-mid-training.png), then cancels it;
2. runs the surrogate ablation (A, B, C, D, R × repeats × iterations, built-in agent, K=5, M=2,
   review gate off so Level 2 mechanisms are validated and run without waiting, confirmation on 3
   seeds), and photographs its comparison page (comparison-page.png), the review page of a
   mechanism the built-in research agent wrote for group C (review-page.png) and a finished group C
   run's page (run-page-finished-surrogate.png); then, from the same
   ablation, the iteration tools: parallel coordinates above the experiment's iteration table
   (parallel-coordinates.png) and the slice plots below them (slice-plots.png), a config diff
   between two runs' best iterations (config-diff.png), the clone-and-edit form (clone-and-edit.png),
   the API docs (api-docs.png) and the token page (api-tokens.png);
   then groups A and B with K = T on the same seeds, whose curves are identical, for the comparison
   page's handling of identical groups (comparison-identical-groups.png);
3. runs a group C surrogate experiment with the review gate on and photographs its run page while
   the run awaits review (run-page-awaiting-review.png), approves the mechanism on the review page,
   and photographs the run's iteration table once the mechanism acted (iterations-mechanism-calls.png);
4. runs a group C surrogate experiment (3 runs, T=15, K=3) whose paired replays the workers make as each
   run ends, and photographs the counterfactual-credit section (the waterfall from the baseline through
   "Level 1 + 1.5 alone" and each mechanism's credit to the final best) of the run whose mechanisms
   earned the most (run-page-credit-waterfall.png).
Chromium is Debian's (/usr/bin/chromium) driven by Playwright, 1280 px wide, whole pages.
`--only NAME,...` (names without .png) writes only those screenshots and skips the parts that make
none of them (the demo on the real trainer takes longest).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_common import BenchEnv, bench_env, make_user, wait_until  # noqa: E402

# Playwright's sync API runs an event loop in this thread; the ORM calls between page actions are
# plain synchronous queries, as in the browser tests (tests/conftest.py).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ONLY: set[str] = set()  # --only: the screenshots to write; empty = all


def wanted(*names: str) -> bool:
    return not ONLY or any(name in ONLY for name in names)


def save(target: Any, name: str, **options: Any) -> None:
    """A page (or a locator) as docs/screenshots/NAME.png, unless --only leaves it out."""
    if wanted(name):
        target.screenshot(path=str(SHOTS / f"{name}.png"), **options)


def log_in(page: Any, url: str) -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("input[name=username]", "bench")
    page.fill("input[name=password]", "bench-password-42")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


def demo_mid_training(page: Any, url: str) -> None:
    from django.core.management import call_command

    from runs.engine import control
    from runs.management.commands.start_demo import DEMO_NAME
    from runs.models import Run

    call_command("start_demo")
    run = Run.objects.get(experiment__name=DEMO_NAME)
    wait_until(lambda: len(Run.objects.get(pk=run.pk).live_progress.get("points", [])) >= 6, 1800,
               "the demo's first training to stream progress", interval=1.0)
    page.goto(f"{url}/runs/{run.pk}/")
    page.wait_for_function("document.getElementById('live-indicator').textContent === 'live'")
    page.wait_for_function("window.bilevelRunPage.curveChart.data.datasets[0].data.length >= 6", timeout=300_000)
    save(page, "run-page-mid-training", full_page=True)
    # Cancelling publishes a live event through async_to_sync, which must not run on Playwright's loop thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(control.cancel_run, Run.objects.get(pk=run.pk)).result()


def surrogate_ablation(page: Any, url: str, repeats: int, iterations: int) -> None:
    from mechanisms.models import MechanismAttachment
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, RunStatus

    experiment = Experiment.objects.create(
        name=f"Surrogate ablation: A/B/C/D/R × {repeats} × {iterations}, built-in agent",
        groups=["A", "B", "C", "D", "R"], repeats=repeats, iterations=iterations, strategy_interval=5,
        research_interval=2, objective="surrogate", budget_value=1.5e12, review_gate=False, confirmation_repeats=3)
    create_runs(experiment)
    control.start_experiment(experiment)
    wait_until(lambda: not experiment.runs.exclude(status__in=[RunStatus.COMPLETED, RunStatus.FAILED]).exists(),
               3 * 3600, "the ablation to finish", interval=1.0)
    page.goto(f"{url}/experiments/{experiment.pk}/compare/")
    page.wait_for_function("document.querySelector('#compare-chart').width > 0")
    save(page, "comparison-page", full_page=True)
    attachment = (MechanismAttachment.objects.filter(run__experiment=experiment, run__group="C")
                  .exclude(ladder=[]).order_by("pk").first())
    if attachment is None:
        raise RuntimeError("the ablation's group C produced no mechanism to show on the review page")
    page.goto(f"{url}/mechanisms/{attachment.pk}/")
    save(page, "review-page", full_page=True)
    finished = experiment.runs.filter(group="C").order_by("repeat")[0]
    page.goto(f"{url}/runs/{finished.pk}/")
    page.wait_for_selector("#iteration-table tbody tr")
    save(page, "run-page-finished-surrogate", full_page=True)
    iteration_tools(page, url, experiment)


def identical_groups(page: Any, url: str) -> None:
    """Groups A and B with K = T: Level 1.5 first acts after the last proposal, so on the same seeds B
    makes exactly A's decisions. The comparison must still show both curves and say why p = 1."""
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, RunStatus

    experiment = Experiment.objects.create(
        name="A vs B with K = T = 6: Level 1.5 never acts before the end", groups=["A", "B"], repeats=3,
        iterations=6, strategy_interval=6, research_interval=1, objective="surrogate", budget_value=1.5e12,
        review_gate=False)
    create_runs(experiment)
    control.start_experiment(experiment)
    wait_until(lambda: not experiment.runs.exclude(status__in=[RunStatus.COMPLETED, RunStatus.FAILED]).exists(),
               1800, "the A/B experiment to finish", interval=0.5)
    page.goto(f"{url}/experiments/{experiment.pk}/compare/")
    page.wait_for_function("document.querySelector('#compare-chart').width > 0")
    save(page, "comparison-identical-groups", full_page=True)


def iteration_tools(page: Any, url: str, experiment: Any) -> None:
    page.goto(f"{url}/experiments/{experiment.pk}/iterations/")
    page.wait_for_selector("#parcoords svg")
    save(page, "parallel-coordinates", full_page=True)
    page.wait_for_selector("#slices svg.slice-panel")
    save(page.locator(".slices-figure"), "slice-plots")
    first, second = experiment.runs.filter(group="C").order_by("repeat")[:2]
    page.goto(f"{url}/diff/?a={first.pk}.{first.best_iteration}&b={second.pk}.{second.best_iteration}")
    save(page, "config-diff", full_page=True)
    page.goto(f"{url}/experiments/{experiment.pk}/clone/")
    save(page, "clone-and-edit", full_page=True)
    page.goto(f"{url}/api/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    save(page, "api-docs", full_page=False)
    page.goto(f"{url}/settings/tokens/")
    save(page, "api-tokens", full_page=True)


def review_gate(page: Any, url: str) -> None:
    from mechanisms.models import MechanismAttachment
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, Run, RunStatus

    experiment = Experiment.objects.create(
        name="Review gate: group C, surrogate, T=8, K=3", groups=["C"], repeats=1, iterations=8,
        strategy_interval=3, research_interval=1, objective="surrogate", budget_value=1.5e12, review_gate=True)
    run = create_runs(experiment)[0]
    control.start_experiment(experiment)
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.AWAITING_REVIEW, 600,
               "the run to await review", interval=0.5)
    page.goto(f"{url}/runs/{run.pk}/")
    page.wait_for_selector("#run-waiting-links a")
    save(page, "run-page-awaiting-review", full_page=True)
    page.click("#run-waiting-links a >> nth=0")
    page.fill("#approve-form textarea[name=comment]", "looks right")
    page.click("#approve-button")
    wait_until(lambda: Run.objects.get(pk=run.pk).is_finished or Run.objects.get(pk=run.pk).status
               == RunStatus.AWAITING_REVIEW, 600, "the run to go on after the approval", interval=0.5)
    for pending in MechanismAttachment.objects.filter(run=run, status="pending"):
        page.goto(f"{url}/mechanisms/{pending.pk}/")
        page.fill("#approve-form textarea[name=comment]", "looks right")
        page.click("#approve-button")
    wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 600, "the run to finish", interval=0.5)
    page.goto(f"{url}/runs/{run.pk}/")
    page.wait_for_selector("#iteration-table td.mechanisms .mechanism-activity")
    save(page.locator("#iteration-table"), "iterations-mechanism-calls")


def credit_waterfall(page: Any, url: str) -> None:
    """A group C surrogate experiment whose runs' paired replays are made by the workers when each run
    ends; the run page's credit section of the run whose mechanisms earned the most (either sign)."""
    from runs.analysis.credit import credits_of_runs
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, Run, RunKind, RunStatus

    experiment = Experiment.objects.create(
        name="Credit: group C, surrogate, T=15, K=3, M=1", groups=["C"], repeats=3, iterations=15,
        strategy_interval=3, research_interval=1, objective="surrogate", budget_value=1.5e12, review_gate=False,
        confirmation_repeats=3)
    create_runs(experiment)
    control.start_experiment(experiment)
    done = [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]
    wait_until(lambda: not experiment.runs.exclude(status__in=done).exists(), 1800, "the runs to finish",
               interval=0.5)
    wait_until(lambda: credits_of_runs(experiment.runs.all()) and all(
        c.complete for c in credits_of_runs(experiment.runs.all()).values())
        and not Run.all_objects.filter(experiment=experiment, kind=RunKind.REPLAY).exclude(status__in=done).exists(),
        1800, "the runs' replays to finish", interval=0.5)
    credits = credits_of_runs(experiment.runs.all())
    chosen = max(credits.values(), key=lambda c: sum(abs(m.outcome.credit or 0) for m in c.mechanisms if m.outcome))
    page.goto(f"{url}/runs/{chosen.run.pk}/")
    page.wait_for_selector("#credit-waterfall rect.wf-bar")
    save(page.locator("#credit"), "run-page-credit-waterfall")


def run(env: BenchEnv, repeats: int, iterations: int) -> None:
    from playwright.sync_api import sync_playwright

    make_user()
    _server, url = env.start_asgi()
    env.start_worker("train", "train")
    env.start_worker("research", "research,default")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        log_in(page, url)
        if wanted("run-page-mid-training"):
            demo_mid_training(page, url)
        if wanted("comparison-page", "review-page", "run-page-finished-surrogate", "parallel-coordinates",
                  "slice-plots", "config-diff", "clone-and-edit", "api-docs", "api-tokens"):
            surrogate_ablation(page, url, repeats, iterations)
        if wanted("comparison-identical-groups"):
            identical_groups(page, url)
        if wanted("run-page-awaiting-review", "iterations-mechanism-calls"):
            review_gate(page, url)
        if wanted("run-page-credit-waterfall"):
            credit_waterfall(page, url)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated screenshot names (without .png); default all")
    args = parser.parse_args()
    ONLY.update(name for name in args.only.split(",") if name)
    with bench_env("screenshots") as env:
        run(env, args.repeats, args.iterations)
    print(f"screenshots written to {SHOTS}")


if __name__ == "__main__":
    main()
