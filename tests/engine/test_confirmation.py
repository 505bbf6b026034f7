"""Confirmation at a run's end: best and baseline re-trained on fresh seeds, exactly once, also across a dead worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from runs.analysis.comparison import build_comparison
from runs.analysis.confirmed import confirmed_deltas
from runs.engine.confirmation import CONFIRMATION_SEED_OFFSET, confirm_or_finish
from runs.engine.experiment_form import ExperimentForm
from runs.engine.step import LeaseKeeper, Step, claim_step, execute_step
from runs.engine.step_errors import StepAborted
from runs.models import Confirmation, InterruptedAttempt, Run, RunStatus
from runs.tasks import reap_expired_leases
from trainer.outcomes import TrainingSummary
from trainer.surrogate import surrogate_evaluate

from .helpers import drive, make_experiment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_client")]


def _confirmations(run: Run) -> list[tuple[str, int, int]]:
    return sorted(Confirmation.objects.filter(run=run).values_list("role", "replicate", "seed"))


def test_best_and_baseline_are_retrained_once_on_fresh_paired_seeds(client: Client, users: Any) -> None:
    experiment = make_experiment(iterations=6, confirmation_repeats=3, seed_base=5)
    run = experiment.runs.get()
    outcomes = drive(run)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and "confirmed on 3 fresh seeds" in run.status_detail
    assert run.best_iteration and run.best_iteration > 0, "the surrogate run should find an improvement"
    seeds = [run.seed + CONFIRMATION_SEED_OFFSET + i for i in range(3)]
    assert _confirmations(run) == sorted((role, i, seeds[i]) for role in ("baseline", "best") for i in range(3))
    assert outcomes.count("confirmation") == 6 and outcomes[-1] == "completed"
    # Each value is the surrogate's for that config and seed: baseline i and best i share seed i.
    best_config = run.iteration_set.get(index=run.best_iteration).config
    for row in Confirmation.objects.filter(run=run):
        expected = surrogate_evaluate(row.config, budget_kind="flops", budget_value=1.5e12, seed=row.seed).val_bpb
        assert row.val_bpb == expected
        assert row.config == (best_config if row.role == "best" else run.iteration_set.get(index=0).config)
    confirmed = confirmed_deltas([run])[run.pk]
    assert confirmed is not None and confirmed.pairs == 3 and confirmed.ci_low is not None
    rows = {(r.role, r.replicate): r.val_bpb or 0.0 for r in Confirmation.objects.filter(run=run)}
    assert confirmed.delta == pytest.approx(sum(rows["best", i] - rows["baseline", i] for i in range(3)) / 3)
    # Comparisons use the confirmed Δ once it exists, and say so; the search Δ stays available.
    default, search = build_comparison(experiment), build_comparison(experiment, delta_source="search")
    assert default["delta_source"] == "confirmed" and search["delta_source"] == "search"
    assert default["groups"][0]["delta"]["mean"] == pytest.approx(confirmed.delta)
    assert search["groups"][0]["delta"]["mean"] == pytest.approx((run.best_val_bpb or 0) - (run.baseline_val_bpb or 0))
    assert default["groups"][0]["runs"][0]["confirmed"]["pairs"] == 3
    client.force_login(users.plain)
    assert client.get(f"/api/runs/{run.pk}/").json()["confirmed"] == confirmed.as_dict()
    # A finished run takes no more steps: nothing is trained or recorded twice.
    assert execute_step(run.pk, run.step_ticket, "late") == "not-claimed"
    assert Confirmation.objects.filter(run=run).count() == 6


def test_without_confirmation_the_run_ends_with_its_last_proposal() -> None:
    experiment = make_experiment(iterations=3, confirmation_repeats=0)
    run = experiment.runs.get()
    assert "confirmation" not in drive(run)
    assert not Confirmation.objects.filter(run=run).exists() and confirmed_deltas([run])[run.pk] is None


def test_a_dead_workers_confirmation_is_done_again_once_and_its_late_commit_is_refused() -> None:
    experiment = make_experiment(iterations=6, confirmation_repeats=2)
    run = experiment.runs.get()
    while not Confirmation.objects.filter(run=run).exists():
        run.refresh_from_db()
        execute_step(run.pk, run.step_ticket, "first")
    run.refresh_from_db()
    assert run.best_iteration, "the premise: the run found a best other than its baseline, so both are confirmed"
    # A worker claims the next confirmation and stalls mid-training (killed, or frozen and then woken).
    assert claim_step(run.pk, run.step_ticket, "stalled:1")
    stalled = _StalledStep(run.pk, "stalled:1", LeaseKeeper(run.pk, "stalled:1"))
    with pytest.raises(StepAborted, match=r"was refused: the lease .* was taken over"):
        confirm_or_finish(stalled.ctx, stalled._evaluate)
    refused = InterruptedAttempt.objects.get(run=run, holder="stalled:1")  # fenced, and kept
    assert refused.fenced_at is not None and refused.fenced_result["what"].startswith("confirmation ")
    # Meanwhile its lease expired, the reaper re-queued the step, and another worker did every training left.
    assert stalled.survivor[-1] == "completed" and stalled.survivor.count("confirmation") == 3
    assert Confirmation.objects.filter(run=run).count() == 4
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED


class _StalledStep(Step):
    """A step whose training outlives its lease: while it trains, the reaper and a second worker take over."""

    survivor: list[str]

    def _evaluate(self, config: dict[str, Any], seed: int, real: bool = False) -> TrainingSummary:
        Run.objects.filter(pk=self.run_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        assert self.run_id in reap_expired_leases()
        self.survivor = drive(Run.objects.get(pk=self.run_id))
        return super()._evaluate(config, seed, real)


@pytest.mark.parametrize(("objective", "expected"), [("surrogate", 3), ("trainer", 2)])
def test_the_form_defaults_r_by_objective_and_keeps_an_explicit_value(objective: str, expected: int) -> None:
    data = {"name": "x", "groups": ["A"], "repeats": 1, "iterations": 2, "strategy_interval": 1,
            "research_interval": 1, "objective": objective, "preset": "cpu-tiny", "budget_kind": "flops",
            "budget_value": 1.5e12, "seed_base": 0, "threads": 1, "agent_backend": "builtin",
            "acceptance_policy": "strict", "noise_k": 2.0, "baseline_repeats": 3}
    form = ExperimentForm(data)
    assert form.is_valid(), form.errors
    assert form.save_and_start(None).confirmation_repeats == expected
    explicit = ExperimentForm({**data, "name": "y", "confirmation_repeats": 0})
    assert explicit.is_valid() and explicit.save_and_start(None).confirmation_repeats == 0
