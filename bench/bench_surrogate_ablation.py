"""surrogate_ablation: the paper's ablation on the surrogate, reported as Table 2 (search Δ and confirmed Δ).

5 groups (A, B, C, D, R) × `repeats` × `iterations` proposals, built-in agent, strict acceptance,
K=5, M=2, review gate off, the surrogate objective, `confirm` confirmation seeds per run (the
best and the baseline config re-trained on fresh seeds when a run ends). One train worker and one
research worker. Prints per group the mean search Δ and, where the code has it, the confirmed Δ,
and for each pair of groups the permutation and Welch p-values with Holm's correction, the smallest
difference detectable at 80% power and the runs per group the paper's C − A would need.
Options: repeats=10, iterations=30, confirm=3, real=0 (seeds of the real-trainer confirmation of each run's
best and baseline: the real Δ; about a minute per training), start=default|tuned (every run's baseline: the
schema's defaults or the cpu-tiny tuned start, trainer/data/tuned_starts.json).
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
    from trainer.tuned_start import tuned_start

    repeats = int(options.get("repeats", 10))
    iterations = int(options.get("iterations", 30))
    confirm = int(options.get("confirm", 3))
    real = int(options.get("real", 0))
    start = options.get("start", "default")
    if start not in ("default", "tuned"):
        raise SystemExit(f"start must be default or tuned, got {start!r}")
    tuned = tuned_start("cpu-tiny") if start == "tuned" else None
    experiment = Experiment.objects.create(
        name="surrogate ablation", groups=GROUPS, repeats=repeats, iterations=iterations, strategy_interval=5,
        research_interval=2, objective="surrogate", budget_value=1.5e12, review_gate=False,
        confirmation_repeats=confirm, real_confirmation_repeats=real,
        tuned_start=tuned.as_dict() if tuned else {}, base_config=tuned.config if tuned else {})
    create_runs(experiment)
    env.start_worker("train", "train")
    env.start_worker("research", "research,default")
    started = time.monotonic()
    control.start_experiment(experiment)
    wait_until(lambda: not experiment.runs.exclude(status__in=[RunStatus.COMPLETED, RunStatus.FAILED]).exists(),
               3 * 3600, "the ablation to finish", interval=1.0)
    wall = time.monotonic() - started
    failed = experiment.runs.filter(status=RunStatus.FAILED).count()

    sources = ["search", "confirmed", *(["real"] if real else [])]
    data_by_source = {name: comparison(experiment, name) for name in sources}
    by_key = {name: {g["key"]: g for g in data["groups"]} for name, data in data_by_source.items()}
    rows = []
    for group in data_by_source["search"]["groups"]:
        row = [group["key"], group["headroom"]["ties"]["runs_tied"]]
        for name in sources:
            delta = by_key[name][group["key"]]["delta"]
            row += [by_key[name][group["key"]]["n"], delta["mean"], delta["sd"]]
        rows.append(row)
    pair_rows = []
    for name, data in data_by_source.items():
        for pair in data["pairs"]:
            pair_rows.append([name, f"{pair['first']} − {pair['second']}", pair["difference"], pair["hedges_g"],
                              pair["p_permutation"], pair["p_permutation_holm"], pair["p_welch"],
                              pair["p_welch_holm"], pair["power"]["detectable"], pair["power"]["n_for_reference"]])
    return Report(
        name="surrogate_ablation" if start == "default" else f"surrogate_ablation-{start}",  # one section each
        title=(f"surrogate_ablation: 5 groups × {repeats} × {iterations}, {start} start, confirmation on {confirm} "
               f"seeds, real confirmation on {real}"),
        command=(f"python3 bootstrap.py bench surrogate_ablation repeats={repeats} iterations={iterations} "
                 f"confirm={confirm} real={real} start={start}"),
        setup=(f"Built-in agent, strict acceptance, K=5, M=2, review gate off, surrogate objective (fitted model, not "
               f"real training; seed noise split into a per-seed and a per-config part); {wall:.0f} s wall, "
               f"{failed} failed runs. Search Δ = best of the run − its baseline; confirmed Δ = mean over {confirm} "
               "fresh seeds of (best config − baseline config), paired by seed; real Δ = the same on the real "
               "trainer (1 thread, 1.5e12 FLOPs)."),
        headers=["group", "runs tied on one best", *[f"{label} {name}" for name in sources
                                                     for label in ("n", "Δ mean", "Δ sd")]],
        rows=rows,
        extra_tables=[("Pairs (first − second; negative: the first improved more). p-values two-sided, Holm across "
                       "the 10 pairs.", ["Δ", "pair", "difference", "Hedges' g", "p permutation", "Holm",
                                        "p Welch", "Holm", "detectable at 80% power",
                                        "n per group for the paper's C − A"], pair_rows)],
    )
