"""mechanism_credit: the catalogue mechanisms' counterfactual credit over a surrogate ablation of groups C and D.

Groups C and D × `repeats` × `iterations` proposals, built-in agent, strict acceptance, K=5, M=2, review
gate off, the surrogate objective, `confirm` confirmation seeds. Each run that ends with mechanisms gets
its paired replays by itself (a task on the workers: without each mechanism, and without all of them), as
in production. The table is what the mechanism library shows (``runs.analysis.credit.credit_by_mechanism``, the
library page's own numbers): per mechanism the mean credit with its 95% t interval and n, the confirmed
credit, and the flag (credit ≤ 0 over ≥ 5 runs). Credit = final best of the replay without it − the run's
final best: positive = the mechanism helped. Also per group the credit of all a run's mechanisms together.
Options: repeats=10, iterations=30, confirm=3.

    .venv/bin/python bench/run.py mechanism_credit            (or: python3 bootstrap.py bench mechanism_credit)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench_common import BenchEnv, Report, wait_until

GROUPS = ["C", "D"]


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    from mechanisms.models import Mechanism
    from runs.analysis.comparison import build_comparison
    from runs.analysis.credit import credit_by_mechanism, outcomes_for
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, Run, RunKind, RunStatus

    repeats = int(options.get("repeats", 10))
    iterations = int(options.get("iterations", 30))
    confirm = int(options.get("confirm", 3))
    experiment = Experiment.objects.create(
        name="mechanism credit: C/D surrogate ablation", groups=GROUPS, repeats=repeats, iterations=iterations,
        strategy_interval=5, research_interval=2, objective="surrogate", budget_value=1.5e12, review_gate=False,
        confirmation_repeats=confirm)
    create_runs(experiment)
    env.start_worker("train", "train")
    env.start_worker("research", "research,default")
    started = time.monotonic()
    control.start_experiment(experiment)
    done = [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]
    wait_until(lambda: not experiment.runs.exclude(status__in=done).exists(), 3 * 3600, "the ablation to finish",
               interval=1.0)
    # A run's replays are queued when it completes; wait until every such run has them all, finished.
    from runs.mechanism_spans import mechanism_spans, removal_sets

    def replays_done() -> bool:
        replays = Run.all_objects.filter(experiment=experiment, kind=RunKind.REPLAY)
        if replays.exclude(status__in=done).exists():
            return False
        have: dict[int, int] = {}
        for source_id in replays.values_list("replay_of_id", flat=True):
            have[source_id] = have.get(source_id, 0) + 1
        return all(have.get(run.pk, 0) == len(removal_sets(mechanism_spans(run)))
                   for run in experiment.runs.filter(status=RunStatus.COMPLETED))

    wait_until(replays_done, 3 * 3600, "the replays to finish", interval=2.0)
    wall = time.monotonic() - started
    replays = list(Run.all_objects.filter(experiment=experiment, kind=RunKind.REPLAY))
    # Worker time per replay: its own steps (replays share the worker with each other and the runs, so
    # start-to-end time says more about the queue than about a replay).
    replay_seconds = [sum(replay.iteration_set.filter(index__gte=replay.replay_from_iteration or 0)
                          .values_list("wall_seconds", flat=True)) for replay in replays]
    diverged = sum(1 for outcomes in outcomes_for(list(experiment.runs.all())).values()
                   for outcome in outcomes if outcome.diverged_at is not None)
    failed = sum(r.status != RunStatus.COMPLETED for r in replays)

    names = dict(Mechanism.objects.values_list("pk", "name"))
    rows: list[list[Any]] = []
    for pk, summary in sorted(credit_by_mechanism().items(), key=lambda item: names.get(item[0], "")):
        credit, confirmed = summary.credit, summary.confirmed
        rows.append([names.get(pk, str(pk)), credit.n, _num(credit.mean), _num(credit.ci_low), _num(credit.ci_high),
                     confirmed.n, _num(confirmed.mean), _num(confirmed.ci_low), _num(confirmed.ci_high),
                     "flagged" if summary.flagged else ""])
    group_rows: list[list[Any]] = []
    for group in build_comparison(experiment, delta_source="search")["groups"]:
        total = group["credit"]["all_mechanisms"]
        group_rows.append([group["key"], total["credit"]["n"], _num(total["credit"]["mean"]),
                           _num(total["credit"]["ci_low"]), _num(total["credit"]["ci_high"]),
                           _num(total["confirmed_credit"]["mean"])])
    return Report(
        name="mechanism_credit",
        title=f"mechanism_credit: catalogue mechanisms' credit over C/D × {repeats} × {iterations} on the surrogate",
        command=f"python3 bootstrap.py bench mechanism_credit repeats={repeats} iterations={iterations} "
                f"confirm={confirm}",
        setup=(f"Built-in agent, strict acceptance, K=5, M=2, review gate off, surrogate objective (fitted model, not "
               f"real training), confirmation on {confirm} seeds. {len(replays)} paired replays ({failed} not "
               f"completed, {diverged} diverged from their run), made by the workers as each run ended; a replay "
               f"took {statistics.median(replay_seconds) if replay_seconds else float('nan'):.1f} s of worker time "
               f"(median; max {max(replay_seconds, default=float('nan')):.1f} s); {wall:.0f} s wall in all. Credit "
               "= final best val_bpb of the replay without the mechanism − the run's final best: positive = it "
               "helped. As the mechanism library shows it."),
        headers=["mechanism", "n runs", "credit mean", "95% CI low", "CI high", "n confirmed", "confirmed credit mean",
                 "CI low", "CI high", "flag (≤ 0 over ≥ 5 runs)"],
        rows=rows,
        extra_tables=[("All of a run's mechanisms together (the replay without any of them), per group.",
                       ["group", "n runs", "credit mean", "95% CI low", "CI high", "confirmed credit mean"],
                       group_rows)],
    )


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:+.5f}"
