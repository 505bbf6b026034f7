"""surrogate_ablation: the paper's ablation on the surrogate, reported as Table 2 (search Δ and confirmed Δ).

5 groups (A, B, C, D, R) × `repeats` × `iterations` proposals, built-in agent, strict acceptance,
K=5, M=2, review gate off, the surrogate objective, `confirm` confirmation seeds per run (the
best and the baseline config re-trained on fresh seeds when a run ends). One train worker and one
research worker. Prints per group the mean search Δ and, where the code has it, the confirmed Δ,
and for each pair of groups the permutation and Welch p-values with Holm's correction.
Options: repeats=10, iterations=30, confirm=3.
"""

from __future__ import annotations

import time
from typing import Any

from bench_common import BenchEnv, Report, wait_until

GROUPS = ["A", "B", "C", "D", "R"]


def comparison(experiment: Any, source: str) -> dict[str, Any]:
    from runs.analysis.comparison import build_comparison

    return build_comparison(experiment, delta_source=source)


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, RunStatus

    repeats = int(options.get("repeats", 10))
    iterations = int(options.get("iterations", 30))
    confirm = int(options.get("confirm", 3))
    experiment = Experiment.objects.create(
        name="surrogate ablation", groups=GROUPS, repeats=repeats, iterations=iterations, strategy_interval=5,
        research_interval=2, objective="surrogate", budget_value=1.5e12, review_gate=False,
        confirmation_repeats=confirm)
    create_runs(experiment)
    env.start_worker("train", "train")
    env.start_worker("research", "research,default")
    started = time.monotonic()
    control.start_experiment(experiment)
    wait_until(lambda: not experiment.runs.exclude(status__in=[RunStatus.COMPLETED, RunStatus.FAILED]).exists(),
               3 * 3600, "the ablation to finish", interval=1.0)
    wall = time.monotonic() - started
    failed = experiment.runs.filter(status=RunStatus.FAILED).count()

    search, confirmed = comparison(experiment, "search"), comparison(experiment, "confirmed")
    by_key = {g["key"]: g for g in confirmed["groups"]}
    rows = []
    for group in search["groups"]:
        other = by_key[group["key"]]
        rows.append([group["key"], group["n"], group["delta"]["mean"], group["delta"]["sd"], other["n"],
                     other["delta"]["mean"], other["delta"]["sd"], other["delta"]["ci_low"], other["delta"]["ci_high"]])
    pair_rows = []
    for name, data in (("search", search), ("confirmed", confirmed)):
        for pair in data["pairs"]:
            pair_rows.append([name, f"{pair['first']} − {pair['second']}", pair["difference"], pair["hedges_g"],
                              pair["p_permutation"], pair["p_permutation_holm"], pair["p_welch"],
                              pair["p_welch_holm"]])
    return Report(
        name="surrogate_ablation",
        title=f"surrogate_ablation: 5 groups × {repeats} × {iterations}, confirmation on {confirm} seeds",
        command=(f"python3 bootstrap.py bench surrogate_ablation repeats={repeats} iterations={iterations} "
                 f"confirm={confirm}"),
        setup=(f"Built-in agent, strict acceptance, K=5, M=2, review gate off, surrogate objective (fitted model, not "
               f"real training; seed noise split into a per-seed and a per-config part); {wall:.0f} s wall, "
               f"{failed} failed runs. Search Δ = best of the run − its baseline; confirmed Δ = mean over {confirm} "
               "fresh seeds of (best config − baseline config), paired by seed."),
        headers=["group", "n", "search Δ mean", "search Δ sd", "n confirmed", "confirmed Δ mean", "confirmed Δ sd",
                 "confirmed Δ CI low", "CI high"],
        rows=rows,
        extra_tables=[("Pairs (first − second; negative: the first improved more). p-values two-sided, Holm across "
                       "the 10 pairs.", ["Δ", "pair", "difference", "Hedges' g", "p permutation", "Holm",
                                        "p Welch", "Holm"], pair_rows)],
    )
