"""ablation_throughput: a full surrogate ablation with 1 and then 2 train workers.

5 groups (A, B, C, D, R) × `repeats` × 30 proposals, built-in agent, K=5, M=2, review gate off
(so Level 2 mechanisms are validated, approved and run in the sandbox host), the surrogate
objective. Each configuration gets a fresh experiment with the same seeds, `workers` train
workers (queue `train`, -c 1) and one research worker (queues `research,default`). Wall time
is from queuing the first steps to the last run completing.
Options: repeats=2, iterations=30.
"""

from __future__ import annotations

import re
import statistics
import time
from datetime import datetime
from typing import Any

from bench_common import BenchEnv, Report, proc_sample, summary_stats, tree_pids, wait_until

GROUPS = ["A", "B", "C", "D", "R"]


def one(env: BenchEnv, workers: int, repeats: int, iterations: int) -> dict[str, Any]:
    from mechanisms.models import ResearchSession
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, Iteration, RunStatus

    experiment = Experiment.objects.create(
        name=f"ablation with {workers} train worker(s)", groups=GROUPS, repeats=repeats, iterations=iterations,
        strategy_interval=5, research_interval=2, objective="surrogate", budget_value=1.5e12, review_gate=False)
    create_runs(experiment)
    train = [env.start_worker(f"train{workers}-{n}", "train") for n in range(workers)]
    research = env.start_worker(f"research{workers}", "research,default")
    services = [*train, research]
    cpu_before = {s.name: sum(proc_sample(p).cpu_seconds for p in tree_pids(s.process.pid)) for s in services}
    started = time.monotonic()
    control.start_experiment(experiment)
    wait_until(lambda: not experiment.runs.exclude(status__in=[RunStatus.COMPLETED, RunStatus.FAILED]).exists(),
               3600, "the ablation to finish", interval=0.5)
    wall = time.monotonic() - started
    cpu = {s.name: sum(proc_sample(p).cpu_seconds for p in tree_pids(s.process.pid)) - cpu_before[s.name]
           for s in services}
    for service in services:
        service.stop()
        env.services.remove(service)

    statuses = list(experiment.runs.values_list("status", flat=True))
    rows = list(Iteration.objects.filter(run__experiment=experiment).values("run__group", "wall_seconds"))
    tasks, idle = [], []
    for worker in train:
        durations, gaps = task_timeline(worker.output())
        tasks += durations
        idle += gaps
    by_group = {g: [r["wall_seconds"] for r in rows if r["run__group"] == g] for g in GROUPS}
    return {
        "workers": workers, "wall": wall, "steps": len(rows), "failed": statuses.count(RunStatus.FAILED),
        "completed": statuses.count(RunStatus.COMPLETED), "runs": len(statuses),
        "iteration_ms": 1000 * statistics.median(r["wall_seconds"] for r in rows),
        "task_ms": 1000 * statistics.median(tasks), "idle_ms": summary_stats([1000 * g for g in idle])[:2],
        "busy": sum(tasks) / (wall * workers),
        "by_group_ms": {g: 1000 * statistics.median(v) for g, v in by_group.items() if v},
        "train_cpu": sum(v for k, v in cpu.items() if k.startswith("train")),
        "research_cpu": cpu[research.name],
        "sessions": ResearchSession.objects.filter(run__experiment=experiment).count(),
    }


LOG_LINE = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+): INFO/[\w-]+\] Task runs\.tasks\.run_step\[[\w-]+\] "
                      r"(?P<what>received|succeeded in (?P<seconds>[\d.e-]+)s)")


def task_timeline(log: str) -> tuple[list[float], list[float]]:
    """From a worker's log: each step task's duration, and the worker's idle time between tasks."""
    durations, gaps, finished = [], [], None
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match["seconds"]:
            durations.append(float(match["seconds"]))
            finished = at
        elif finished is not None:
            gaps.append(max(0.0, at - finished))
            finished = None
    return durations, gaps


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    repeats = int(options.get("repeats", 2))
    iterations = int(options.get("iterations", 30))
    results = [one(env, workers, repeats, iterations) for workers in (1, 2)]
    rows = [[r["workers"], f"{r['completed']}/{r['runs']}", r["steps"], r["sessions"], r["wall"],
             r["steps"] / r["wall"], r["iteration_ms"], r["task_ms"], r["idle_ms"][0], r["idle_ms"][1],
             100 * r["busy"], 100 * r["train_cpu"] / r["wall"], 100 * r["research_cpu"] / r["wall"]]
            for r in results]
    scaling = results[0]["wall"] / results[1]["wall"]
    group_rows = [[g, *[r["by_group_ms"].get(g, float("nan")) for r in results]] for g in GROUPS]
    return Report(
        name="ablation_throughput",
        title=f"ablation_throughput: surrogate ablation, 5 groups × {repeats} × {iterations}",
        command=f"python3 bootstrap.py bench ablation_throughput repeats={repeats} iterations={iterations}",
        setup=(f"n = {repeats} repeats per group ({5 * repeats} runs, {5 * repeats * (iterations + 1)} steps per "
               "configuration); built-in agent; K=5, M=2, review gate off; one research worker beside the train "
               "workers. Iteration = Iteration.wall_seconds (propose, evaluate, decide, record); step task = the whole "
               "Celery task (claim, state load, iteration, release, enqueue the next); worker idle = from a task's end "
               "to the worker receiving its next one (Celery dispatch), from the workers' logs; CPU % of one core."),
        headers=["train workers", "runs done", "steps", "L2 sessions", "wall s", "steps/s", "iteration p50 ms",
                 "step task p50 ms", "worker idle p50 ms", "idle p95 ms", "workers busy %", "train CPU %",
                 "research CPU %"],
        rows=rows,
        extra_tables=[("Median iteration time by group (ms): C and D start a sandboxed mechanism host per step once "
                       "a mechanism is active.", ["group", "1 worker", "2 workers"], group_rows)],
        notes=[f"scaling 1 → 2 train workers: {scaling:.2f}× faster (ideal 2×; the machine has 2 cores shared "
               "with the database, Redis, the research worker and other work)."],
    )
