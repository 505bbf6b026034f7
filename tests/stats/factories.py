"""Deterministic experiments with finished runs, built directly in the database (no training)."""

from __future__ import annotations

import random

from runs.models import Experiment, Iteration, LLMCall, Run, RunStatus

PARAMETERS = ["MATRIX_LR", "WEIGHT_DECAY", "WARMDOWN_RATIO", "DEPTH", "TOTAL_BATCH_SIZE"]
# Mean gain per kept proposal, so groups differ clearly: R worst, C best.
GROUP_DRIFT = {"R": 0.000, "A": 0.004, "B": 0.006, "C": 0.010, "D": 0.008}


def make_experiment(
    groups: tuple[str, ...] = ("A", "C", "R"),
    repeats: int = 3,
    iterations: int = 10,
    seed: int = 1,
    name: str = "synthetic",
    llm_calls: bool = False,
) -> Experiment:
    rng = random.Random(seed)
    experiment = Experiment.objects.create(name=name, groups=list(groups), repeats=repeats, iterations=iterations)
    iteration_rows = []
    for group in groups:
        for repeat in range(1, repeats + 1):
            baseline = 2.66 + rng.uniform(-0.02, 0.02)
            run = Run.objects.create(
                experiment=experiment, group=group, repeat=repeat, seed=repeat, status=RunStatus.COMPLETED,
                baseline_val_bpb=baseline, random_control=group == "R",
            )
            best, best_index = baseline, 0
            iteration_rows.append(Iteration(run=run, index=0, kind="baseline", status="baseline", val_bpb=baseline))
            for index in range(1, iterations + 1):
                name_changed = PARAMETERS[rng.randrange(len(PARAMETERS))]
                changes = {name_changed: {"old": 1, "new": 2}}
                if rng.random() < 0.1:
                    iteration_rows.append(Iteration(run=run, index=index, status="crash", changes=changes,
                                                    best_before=best, failure_class="diverged"))
                    continue
                value = best + rng.uniform(-0.012, 0.012) - GROUP_DRIFT[group] * rng.random()
                status = "keep" if value < best else "discard"
                iteration_rows.append(Iteration(run=run, index=index, status=status, val_bpb=value, changes=changes,
                                                best_before=best, agent_seconds=0.01))
                if status == "keep":
                    best, best_index = value, index
            Run.objects.filter(pk=run.pk).update(best_val_bpb=best, best_iteration=best_index,
                                                 proposals_done=iterations)
            if llm_calls:
                LLMCall.objects.create(run=run, level="1", purpose="propose", backend="llm", model="m",
                                       prompt="p", reply="r", tokens_in=100, tokens_out=20, latency_seconds=1.5)
    Iteration.objects.bulk_create(iteration_rows)
    return experiment
