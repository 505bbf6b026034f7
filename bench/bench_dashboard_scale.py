"""dashboard_scale: server time, queries and payload of the pages for a full-size experiment.

An experiment of 5 groups × 10 repeats × (baseline + 30 proposals) = 1,550 iterations is written
directly (realistic rows: full configs, changes, hypotheses, decision reasons, timings and a
50-point training curve each, as the real trainer records; outer cycles for B/C and an active
mechanism with attribution for C/D). Every page is requested through Django's test client
(middleware, views, templates, ORM: the server's work without the network) `repeats` times.
Options: repeats=7, curve_points=50.
"""

from __future__ import annotations

import gzip
import random
import time
from typing import Any

from bench_common import BenchEnv, Report, make_user, percentile

GROUPS = ["A", "B", "C", "D", "R"]
REPEATS_PER_GROUP = 10
PROPOSALS = 30


def build(user: Any, curve_points: int) -> tuple[Any, Any]:
    from mechanisms.models import Mechanism, MechanismAttachment
    from runs.engine.control import create_runs
    from runs.models import Experiment, Iteration, OuterCycle
    from trainer.schema import config_to_json, default_config

    rng = random.Random(0)
    experiment = Experiment.objects.create(
        name="dashboard scale", groups=GROUPS, repeats=REPEATS_PER_GROUP, iterations=PROPOSALS, strategy_interval=5,
        research_interval=2, objective="trainer", created_by=user)
    runs = create_runs(experiment)
    mechanism = Mechanism.objects.create(code_hash="0" * 64, name="tabu", code="class TabuSearch:\n    pass\n",
                                         spec={"name": "tabu"}, origin="builtin-catalogue", passed_ladder=True)
    base = config_to_json(default_config())
    knobs = ["MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "WARMDOWN_RATIO", "WEIGHT_DECAY", "TOTAL_BATCH_SIZE"]
    rows, cycles = [], []
    for run in runs:
        baseline = 2.66 + rng.gauss(0, 0.03)
        best, config = baseline, dict(base)
        for index in range(PROPOSALS + 1):
            knob = knobs[index % len(knobs)]
            new = config[knob] * rng.choice([0.5, 2.0]) if index else config[knob]
            value = best + rng.gauss(0.01, 0.04)
            keep = index > 0 and value < best
            status = "baseline" if index == 0 else ("keep" if keep else rng.choice(["discard"] * 9 + ["crash"]))
            curve = [[step * 4, 5.5 - 3 * step / curve_points + rng.random() * 0.05] for step in range(curve_points)]
            rows.append(Iteration(
                run=run, index=index, kind="baseline" if index == 0 else "proposal", status=status,
                config={**config, knob: new}, changes={} if index == 0 else {knob: {"old": config[knob], "new": new}},
                hypothesis="" if index == 0 else f"Change {knob} to {new:g}: " + "the loss curve suggests " * 6,
                proposal_source="agent" if index else "", val_bpb=None if status == "crash" else value,
                evaluations=[] if status == "crash" else [value], best_before=None if index == 0 else best,
                decision_reason=f"{value:.4f} vs best {best:.4f}",
                failure_class="diverged" if status == "crash" else "",
                wall_seconds=28.0, training_seconds=24.0, eval_seconds=2.0, agent_seconds=0.05, overhead_seconds=1.9,
                steps=65, tokens=266240, curve=curve,
                hook_calls={"tabu#1": {"filter": 1}} if run.group in "CD" else {},
                mechanism_effects=[{"mechanism": "tabu#1", "hook": "filter", "effect": "proposal_rejected",
                                    "detail": "repeated move"}] if run.group in "CD" and index % 7 == 3 else []))
            if keep:
                best, config = value, {**config, knob: new}
        run.baseline_val_bpb, run.best_val_bpb, run.proposals_done, run.status = baseline, best, PROPOSALS, "completed"
        run.save()
        if run.level_strategy:
            cycles += [OuterCycle(run=run, index=c, after_iteration=c * 5, frozen=["MATRIX_LR"], guidance="g " * 80,
                                  reasons={"MATRIX_LR": "tried 4 times without gain"}) for c in range(1, 7)]
        if run.level_research:
            MechanismAttachment.objects.create(run=run, mechanism=mechanism, status="active", activated_at_iteration=5,
                                               hook_calls={"filter": 25}, decisions_changed=4)
    Iteration.objects.bulk_create(rows, batch_size=500)
    OuterCycle.objects.bulk_create(cycles)
    return experiment, next(r for r in runs if r.group == "C")


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    repeats = int(options.get("repeats", 7))
    user = make_user()
    started = time.monotonic()
    experiment, run_c = build(user, int(options.get("curve_points", 50)))
    built = time.monotonic() - started
    e, r = experiment.pk, run_c.pk
    pages = [
        ("home (experiment list)", "/"),
        ("experiment page (run list, 50 runs)", f"/experiments/{e}/"),
        ("run page (snapshot + table page 1)", f"/runs/{r}/"),
        ("run snapshot JSON (reconnect)", f"/runs/{r}/snapshot.json"),
        ("run iteration table (htmx partial)", f"/runs/{r}/iterations/"),
        ("experiment iteration table, 50/page", f"/experiments/{e}/iterations/"),
        ("… 200/page sorted by Δ, page 3", f"/experiments/{e}/iterations/?per_page=200&sort=-delta&page=3"),
        ("… filtered: keep, changed MATRIX_LR", f"/experiments/{e}/iterations/?status=keep&param=MATRIX_LR"),
        ("experiment CSV export (1,550 rows)", f"/experiments/{e}/iterations/?format=csv"),
        ("comparison page", f"/experiments/{e}/compare/"),
        ("report.html (self-contained)", f"/experiments/{e}/report.html"),
        ("API comparison JSON", f"/api/experiments/{e}/comparison/"),
        ("API iterations, 500/page", f"/api/iterations/?experiment={e}&page_size=500"),
    ]
    client = Client(SERVER_NAME="127.0.0.1")  # an allowed host
    client.force_login(user)
    headers_htmx: dict[str, Any] = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "iteration-table"}
    rows: list[list[Any]] = []
    for label, path in pages:
        extra: dict[str, Any] = headers_htmx if "htmx" in label else {}
        times, size, zipped, queries = [], 0, 0, 0
        for attempt in range(repeats + 1):
            with CaptureQueriesContext(connection) as captured:
                begin = time.perf_counter()
                response: Any = client.get(path, **extra)
                body = b"".join(response.streaming_content) if response.streaming else response.content
                elapsed = time.perf_counter() - begin
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code}")
            if attempt:  # the first request warms caches (templates, the surrogate's imports)
                times.append(elapsed * 1000)
            size, zipped, queries = len(body), len(gzip.compress(body)), len(captured.captured_queries)
        rows.append([label, percentile(times, 50), percentile(times, 95), queries, size / 1024, zipped / 1024])
    slowest = max(rows, key=lambda row: float(row[2]))
    return Report(
        name="dashboard_scale",
        title="dashboard_scale: 50 runs × 30 iterations",
        command=f"python3 bootstrap.py bench dashboard_scale repeats={repeats}",
        setup=(f"5 groups × 10 repeats × (baseline + 30) = 1,550 iterations with 50-point curves, 120 outer cycles, "
               f"20 mechanism attachments (written in {built:.1f} s). Server time = Django test client request "
               f"(middleware + view + template + ORM, no network), {repeats} requests after one warm-up."),
        headers=["page", "p50 ms", "p95 ms", "queries", "KiB", "gzip KiB"],
        rows=rows,
        notes=[f"slowest: {slowest[0]} at p95 {slowest[2]:.0f} ms"],
    )
