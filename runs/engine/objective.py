"""What a proposal is evaluated on: the real trainer (a subprocess) or the fitted surrogate.

A surrogate experiment's real confirmation trains on the real trainer whatever the objective: the
experiment's preset, one torch thread (as the surrogate's measurements were taken: their header
says so), and a FLOP budget (see ``real_budget_flops``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from trainer.launch import default_timeout, run_training
from trainer.outcomes import TrainingSummary

from ..models import BudgetKind, Experiment, Objective

# The surrogate's measurements were taken with 1 torch thread per training (trainer/data/surrogate_measurements.json's
# header); the thread count alone moves a result (DESIGN.md: by 0.026), so real confirmation uses the same.
REAL_CONFIRMATION_THREADS = 1
# One cpu-tiny training of the default config at its default budget (1.5e12 FLOPs) on 1 thread, measured once on
# the 2-core development machine: 57 s wall (44 s training, 10 s evaluation, the rest start-up). The form's cost.
REAL_TRAINING_SECONDS = 60.0
MEASUREMENTS_PATH = Path(__file__).resolve().parents[2] / "trainer" / "data" / "surrogate_measurements.json"


def surrogate_fitted_flops() -> float:
    """The FLOP budget the surrogate's real measurements were taken at (its measurements' header)."""
    header = json.loads(MEASUREMENTS_PATH.read_text(encoding="utf-8"))["header"]
    return float(header["default_flops_budget"])


def real_budget_flops(experiment: Experiment) -> float:
    """The real trainer's FLOP budget for a surrogate experiment's real confirmation.

    A FLOP budget is the same compute on both (the surrogate predicts a training of that many FLOPs); a
    wall-clock budget has no reproducible real counterpart on a shared machine, so it maps to the budget the
    surrogate was fitted at.
    """
    if experiment.budget_kind == BudgetKind.FLOPS:
        return float(experiment.budget_value)
    return surrogate_fitted_flops()


def evaluate_real(
    config: dict[str, Any],
    *,
    experiment: Experiment,
    seed: int,
    workdir: Path,
    on_progress: Callable[[dict[str, Any]], None],
) -> TrainingSummary:
    """A real training of ``config`` for a surrogate experiment's real confirmation (a supervised subprocess)."""
    return _train(config, experiment.preset, BudgetKind.FLOPS, real_budget_flops(experiment), seed,
                  REAL_CONFIRMATION_THREADS, workdir, on_progress)


def _train(
    config: dict[str, Any],
    preset: str,
    budget_kind: str,
    budget_value: float,
    seed: int,
    threads: int,
    workdir: Path,
    on_progress: Callable[[dict[str, Any]], None],
) -> TrainingSummary:
    """The real trainer as a supervised subprocess, its timeout capped by the TRAINER_TIMEOUT_SECONDS setting."""
    timeout = default_timeout(budget_kind, budget_value, preset=preset)
    if settings.TRAINER_TIMEOUT_SECONDS:
        timeout = min(timeout, settings.TRAINER_TIMEOUT_SECONDS)
    return run_training(
        config,
        preset=preset,
        budget_kind=budget_kind,
        budget_value=budget_value,
        seed=seed,
        threads=threads,
        workdir=workdir,
        timeout_seconds=timeout,
        on_progress=on_progress,
        corpus_dir=settings.TRAINER_CORPUS_DIR,
    )

PACE_REPORT_SECONDS = 0.25


def _pace(seconds: float, on_progress: Callable[[dict[str, Any]], None]) -> None:
    """Tests only (SURROGATE_PACE_SECONDS): take `seconds` of real time, reporting progress as a training does."""
    started = time.monotonic()
    step = 0
    while (elapsed := time.monotonic() - started) < seconds:
        step += 1
        on_progress({"step": step, "budget_fraction": min(1.0, elapsed / seconds), "elapsed": elapsed})
        time.sleep(PACE_REPORT_SECONDS)  # standing in for training time


def evaluate(
    config: dict[str, Any],
    *,
    experiment: Experiment,
    seed: int,
    workdir: Path,
    on_progress: Callable[[dict[str, Any]], None],
) -> TrainingSummary:
    if experiment.objective == Objective.SURROGATE:
        from trainer.surrogate import surrogate_evaluate

        started = time.monotonic()
        summary = surrogate_evaluate(
            config, budget_kind=experiment.budget_kind, budget_value=experiment.budget_value, seed=seed
        )
        if settings.SURROGATE_PACE_SECONDS:
            _pace(settings.SURROGATE_PACE_SECONDS, on_progress)
        # The iteration's timing columns are real seconds; the fitted model's training time is kept apart.
        summary.extra["simulated_seconds"] = summary.training_seconds + summary.eval_seconds
        summary.training_seconds = time.monotonic() - started
        summary.eval_seconds = 0.0
        return summary
    return _train(config, experiment.preset, experiment.budget_kind, experiment.budget_value, seed,
                  experiment.threads, workdir, on_progress)
