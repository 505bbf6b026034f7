"""Shared helpers for the trainer benchmarks: run many trainings through the real launcher."""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.launch import default_timeout, run_training
from trainer.outcomes import TrainingSummary
from trainer.schema import PRESET_SETTINGS, default_config, validate_config

PRESET = "cpu-tiny"
DEFAULT_FLOPS = PRESET_SETTINGS[PRESET].default_flops_budget


@dataclass(frozen=True)
class Job:
    label: str
    changes: Mapping[str, Any]
    seed: int
    budget_kind: str = "flops"
    budget_value: float = DEFAULT_FLOPS
    threads: int = 1


def config_for(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The default config with ``changes`` applied (a change to the default value is allowed here)."""
    return validate_config({**default_config(PRESET), **changes}, preset=PRESET)


def run_job(job: Job, root: Path) -> TrainingSummary:
    workdir = root / f"{job.label.replace(' ', '_').replace('/', '_')}-seed{job.seed}-{job.budget_kind}"
    return run_training(
        config_for(job.changes),
        preset=PRESET,
        budget_kind=job.budget_kind,
        budget_value=job.budget_value,
        seed=job.seed,
        threads=job.threads,
        workdir=workdir,
        timeout_seconds=default_timeout(job.budget_kind, job.budget_value),
    )


def run_jobs(jobs: Sequence[Job], parallel: int = 2, verbose: bool = True) -> list[TrainingSummary]:
    """Run ``jobs`` through the real launcher, ``parallel`` at a time; results in job order."""
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        root = Path(tmp)

        def one(job: Job) -> TrainingSummary:
            summary = run_job(job, root)
            if verbose:
                bpb = f"{summary.val_bpb:.4f}" if summary.val_bpb is not None else "-"
                print(
                    f"  {job.label:<28} seed={job.seed} {job.budget_kind}={job.budget_value:g} val_bpb={bpb} "
                    f"steps={summary.steps} train={summary.training_seconds:.1f}s {summary.failure_class}",
                    flush=True,
                )
            return summary

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            return list(pool.map(one, jobs))


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    data = list(values)
    return statistics.fmean(data), (statistics.stdev(data) if len(data) > 1 else float("nan"))


def measurement_record(
    label: str, kind: str, config: Mapping[str, Any], seed: int, budget: float, summary: TrainingSummary, parallel: int
) -> dict[str, Any]:
    """One real run as the surrogate's measurements file keeps it."""
    import time

    return {
        "label": label,
        "kind": kind,
        "config": dict(config),
        "seed": seed,
        "budget_kind": "flops",
        "budget_value": budget,
        "val_bpb": summary.val_bpb,
        "failure_class": summary.failure_class,
        "error": summary.error,
        "steps": summary.steps,
        "tokens": summary.tokens,
        "flops": summary.flops,
        "training_seconds": summary.training_seconds,
        "eval_seconds": summary.eval_seconds,
        "threads": 1,
        "parallel_runs": parallel,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
