"""Data builders for the dashboard tests: an experiment with runs and recorded iterations."""

from __future__ import annotations

from typing import Any

import pytest

from runs.models import Experiment, Iteration, Run


def make_experiment(user: Any = None, **fields: Any) -> Experiment:
    defaults: dict[str, Any] = {"name": "exp", "groups": ["A", "B"], "repeats": 1, "iterations": 6, "created_by": user}
    defaults.update(fields)
    return Experiment.objects.create(**defaults)


def make_run(experiment: Experiment, group: str = "A", repeat: int = 1, **fields: Any) -> Run:
    return Run.objects.create(experiment=experiment, group=group, repeat=repeat, seed=repeat, **fields)


def make_iteration(run: Run, index: int, **fields: Any) -> Iteration:
    defaults: dict[str, Any] = {
        "kind": "proposal" if index else "baseline",
        "status": "discard" if index else "baseline",
        "val_bpb": 2.7,
        "best_before": None if index == 0 else 2.7,
        "wall_seconds": 10.0 + index,
        "training_seconds": 8.0,
        "eval_seconds": 1.0,
        "agent_seconds": 0.5,
        "overhead_seconds": 0.5,
    }
    defaults.update(fields)
    return Iteration.objects.create(run=run, index=index, **defaults)


@pytest.fixture(autouse=True)
def fast_password_hashing(request: pytest.FixtureRequest, settings: Any) -> None:
    """The shared `users` fixture hashes three passwords; in-process tests need no real cost.

    Browser tests log in through a server subprocess that only knows the real hashers.
    """
    if request.node.get_closest_marker("browser") is None:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def populated(users: Any) -> dict[str, Any]:
    """Two runs (groups A and B) with a baseline and a mix of keep/discard/crash proposals."""
    experiment = make_experiment(users.plain, name="populated")
    run_a = make_run(experiment, "A", baseline_val_bpb=2.70, best_val_bpb=2.60, noise_sd=0.01, proposals_done=4)
    run_b = make_run(experiment, "B", baseline_val_bpb=2.71, best_val_bpb=2.71, proposals_done=2)
    make_iteration(run_a, 0, val_bpb=2.70)
    make_iteration(run_a, 1, status="keep", val_bpb=2.65, best_before=2.70,
                   changes={"MATRIX_LR": {"old": 0.04, "new": 0.08}}, hypothesis="double the matrix LR",
                   mechanism_effects=[{"mechanism": "tabu", "hook": "filter", "effect": "rejected"}],
                   proposal_source="agent")
    make_iteration(run_a, 2, status="discard", val_bpb=2.68, best_before=2.65,
                   changes={"DEPTH": {"old": 4, "new": 6}}, hypothesis="deeper model", wall_seconds=50.0)
    make_iteration(run_a, 3, status="crash", val_bpb=None, best_before=2.65, failure_class="diverged",
                   changes={"MATRIX_LR": {"old": 0.08, "new": 0.5}}, hypothesis="much higher LR")
    make_iteration(run_a, 4, status="keep", val_bpb=2.60, best_before=2.65,
                   changes={"WARMDOWN_RATIO": {"old": 0.5, "new": 0.2}}, hypothesis="shorter warmdown")
    make_iteration(run_b, 0, val_bpb=2.71)
    make_iteration(run_b, 1, status="discard", val_bpb=2.75, best_before=2.71,
                   changes={"DEPTH": {"old": 4, "new": 2}}, hypothesis="shallower =SUM(A1)")
    make_iteration(run_b, 2, kind="reevaluation", status="discard", val_bpb=2.72, best_before=2.71,
                   hypothesis="re-check")
    return {"experiment": experiment, "run_a": run_a, "run_b": run_b}
