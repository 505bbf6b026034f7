"""What a proposal is evaluated on: the real trainer (a subprocess) or the fitted surrogate."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from trainer.launch import default_timeout, run_training
from trainer.outcomes import TrainingSummary

from ..models import Experiment, Objective

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
    timeout = default_timeout(experiment.budget_kind, experiment.budget_value, preset=experiment.preset)
    if settings.TRAINER_TIMEOUT_SECONDS:
        timeout = min(timeout, settings.TRAINER_TIMEOUT_SECONDS)
    return run_training(
        config,
        preset=experiment.preset,
        budget_kind=experiment.budget_kind,
        budget_value=experiment.budget_value,
        seed=seed,
        threads=experiment.threads,
        workdir=workdir,
        timeout_seconds=timeout,
        on_progress=on_progress,
        corpus_dir=settings.TRAINER_CORPUS_DIR,
    )
