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
