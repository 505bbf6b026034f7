"""Real confirmation of surrogate runs: best and baseline trained on the real trainer once, paired by seed, also
across a worker SIGKILLed mid-training (a tiny real budget keeps each training to seconds of compute)."""

from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from runs.analysis.comparison import build_comparison
from runs.analysis.confirmed import real_deltas
from runs.engine import control
from runs.engine.confirmation import CONFIRMATION_SEED_OFFSET, planned_trainings
from runs.engine.state import RunState, config_key
from runs.engine.step import execute_step
from runs.models import Confirmation, InterruptedAttempt, Run, RunStatus
from tests.conftest import start_celery_worker, trainers_of
from tests.engine.helpers import drive, make_experiment
from tests.polling import wait_until
from trainer.launch import run_training

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_client")]
TINY_FLOPS = 6e10  # two optimiser steps of the default config on cpu-tiny: the evaluation is most of the time


def _real_rows(run: Run) -> list[Confirmation]:
    return list(Confirmation.objects.filter(run=run, real=True).order_by("replicate", "role"))


def test_a_surrogate_run_ends_with_its_best_and_baseline_trained_for_real_once(
    client: Client, users: Any, tmp_path: Path
) -> None:
    experiment = make_experiment(iterations=6, confirmation_repeats=1, real_confirmation_repeats=1,
                                 budget_value=TINY_FLOPS, seed_base=5)
    run = experiment.runs.get()
    outcomes = drive(run)
    run.refresh_from_db()
    state = RunState.load(run)
    assert run.status == RunStatus.COMPLETED, run.status_detail
    assert "real trainer on 1 seed" in run.status_detail
    assert run.best_iteration and run.best_iteration > 0, "the surrogate search should keep something"
    # The surrogate's re-trainings first, then the real ones; each exactly once.
    assert outcomes[-3:] == ["real-confirmation", "real-confirmation", "completed"]
    assert outcomes.count("confirmation") == 2
    seed = run.seed + CONFIRMATION_SEED_OFFSET
    rows = _real_rows(run)
    assert [(r.role, r.replicate, r.seed) for r in rows] == [("baseline", 0, seed), ("best", 0, seed)]
    assert [r.config for r in rows] == [state.base_config, state.best_config]
    assert all(r.budget_flops == TINY_FLOPS and r.val_bpb is not None for r in rows)
    # Really the real trainer, with 1 thread at the experiment's FLOP budget: a direct training on the same seed
    # gives the same value (the thread count alone would move it), and the surrogate's prediction does not.
    direct = run_training(state.base_config, preset="cpu-tiny", budget_kind="flops", budget_value=TINY_FLOPS,
                          seed=seed, threads=1, workdir=tmp_path, timeout_seconds=600)
    assert direct.val_bpb == rows[0].val_bpb
    surrogate_baseline = Confirmation.objects.get(run=run, real=False, role="baseline").val_bpb
    assert surrogate_baseline != rows[0].val_bpb
    # Real Δ: the paired difference, beside search Δ and confirmed Δ everywhere they are shown.
    real = real_deltas([run])[run.pk]
    assert real is not None and real.pairs == 1
    assert real.delta == pytest.approx((rows[1].val_bpb or 0) - (rows[0].val_bpb or 0))
    comparison = build_comparison(experiment, delta_source="real")
    assert comparison["delta_source"] == "real" and comparison["real_available"]
    group = comparison["groups"][0]
    assert group["delta"]["mean"] == pytest.approx(real.delta)
    assert group["real_delta"]["mean"] == pytest.approx(real.delta)
    assert group["runs"][0]["confirmed"] is not None and group["runs"][0]["search_delta"] is not None
    client.force_login(users.plain)
    assert client.get(f"/api/runs/{run.pk}/").json()["real_confirmed"] == real.as_dict()
    api = client.get(f"/api/experiments/{experiment.pk}/comparison/?delta=real").json()
    assert api["groups"][0]["delta"]["mean"] == pytest.approx(real.delta)
    page = client.get(f"/experiments/{experiment.pk}/compare/?delta=real").content.decode()
    assert 'value="real" selected' in page and "not confirmed on the real trainer" not in page
    summary = list(csv.DictReader(io.StringIO(client.get(f"/experiments/{experiment.pk}/summary.csv?delta=real")
                                              .content.decode())))
    assert float(summary[0]["real_delta"]) == pytest.approx(real.delta) and summary[0]["delta_source"] == "real"
    # A finished run takes no more steps: nothing is trained or recorded twice.
    assert execute_step(run.pk, run.step_ticket, "late") == "not-claimed"
    assert Confirmation.objects.filter(run=run, real=True).count() == 2


def test_real_trainings_are_planned_only_for_surrogate_experiments() -> None:
    surrogate = make_experiment(iterations=1, confirmation_repeats=2, real_confirmation_repeats=3)
    trainer = make_experiment(name="real", objective="trainer", iterations=1, confirmation_repeats=2,
                              real_confirmation_repeats=3)
    base = RunState.load(surrogate.runs.get()).base_config
    best = {**base, "MATRIX_LR": 0.02}
    planned = planned_trainings(surrogate.runs.get(), base, best)
    assert [(p.real, p.role, p.replicate) for p in planned if p.real] == [
        (True, role, i) for i in range(3) for role in ("baseline", "best")
    ]
    # Paired with the surrogate's own re-trainings too: replicate i uses the same seed on both.
    seeds = {(p.real, p.replicate): p.seed for p in planned}
    assert seeds[True, 0] == seeds[False, 0] and seeds[True, 1] == seeds[False, 1]
    assert not [p for p in planned_trainings(trainer.runs.get(), base, best) if p.real]
    assert len(planned_trainings(surrogate.runs.get(), base, base)) == 2 + 3  # best = baseline: trained once


@pytest.mark.services
def test_a_worker_killed_mid_real_confirmation_loses_nothing_and_records_each_training_once() -> None:
    experiment = make_experiment(iterations=2, confirmation_repeats=0, real_confirmation_repeats=1,
                                 budget_value=TINY_FLOPS)
    run = experiment.runs.get()
    doomed = start_celery_worker(name="doomed")
    control.start_experiment(experiment)
    # Only real trainings start trainer processes in a surrogate run: one running is the real confirmation.
    wait_until(lambda: bool(trainers_of(run.pk)), 240, "the real confirmation to be training")
    assert not Confirmation.objects.filter(run=run).exists(), "killed before its first real training was recorded"
    os.killpg(os.getpgid(doomed.process.pid), signal.SIGKILL)
    doomed.process.wait()
    doomed.stop()
    wait_until(lambda: not trainers_of(run.pk), 10, "the orphaned trainer to die with its worker")

    rescuer = start_celery_worker(name="rescuer")
    try:
        # On the machine where the holder died it takes the step over at once (the dead pid is proof enough).
        wait_until(lambda: InterruptedAttempt.objects.filter(run=run).exists(), 30, "the rescuer to take over")
        wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 300, "the run to finish on the rescuer")
    finally:
        rescuer.stop()

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    state = RunState.load(run)
    planned = [p for p in planned_trainings(run, state.base_config, state.best_config) if p.real]
    rows = _real_rows(run)
    assert sorted((r.role, r.replicate, r.seed) for r in rows) == sorted((p.role, p.replicate, p.seed) for p in planned)
    assert all(r.val_bpb is not None and r.budget_flops == TINY_FLOPS for r in rows)
    assert real_deltas([run])[run.pk] is not None
    # The killed attempt and its retry were both claims; the retry's training is the one recorded.
    assert run.steps_claimed >= 3 + len(planned) + 1


def test_a_replay_reuses_real_and_objective_values_apart() -> None:
    """Both kinds of confirmation share seeds: a replay takes each kind from the source's rows of that kind."""
    from runs.engine.replay import recorded_measurements

    experiment = make_experiment(iterations=1, confirmation_repeats=1, real_confirmation_repeats=1)
    run = experiment.runs.get()
    config = RunState.load(run).base_config
    seed = run.seed + CONFIRMATION_SEED_OFFSET
    Confirmation.objects.create(run=run, real=False, role="baseline", replicate=0, seed=seed, config=config,
                                val_bpb=3.01)
    Confirmation.objects.create(run=run, real=True, role="baseline", replicate=0, seed=seed, config=config,
                                val_bpb=3.12, budget_flops=1.5e12)
    key = (config_key(config), seed)
    assert recorded_measurements(run)[key] == 3.01
    assert recorded_measurements(run, real=True) == {key: 3.12}
