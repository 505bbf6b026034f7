"""Step claiming, the step chain, acceptance in a real run, pause/resume/cancel (surrogate objective)."""

from __future__ import annotations

from typing import Any

import pytest

from runs.engine import control
from runs.engine.lease import claim_step
from runs.engine.state import RunState
from runs.engine.step import execute_step
from runs.models import IterationKind, IterationStatus, Run, RunStatus
from tests.engine.helpers import drive, make_experiment

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_step_is_claimed_by_exactly_one_worker_and_stale_tickets_do_nothing(redis_client: Any) -> None:
    run = make_experiment().runs.get()
    control.enqueue_step(run.pk)
    run.refresh_from_db()

    assert claim_step(run.pk, run.step_ticket, "worker-a")
    assert not claim_step(run.pk, run.step_ticket, "worker-b")  # the lease is held
    assert execute_step(run.pk, run.step_ticket - 1, "worker-c") == "not-claimed"  # superseded ticket


def test_a_run_goes_from_baseline_to_completion_with_contiguous_iterations(redis_client: Any) -> None:
    experiment = make_experiment(groups=["B"], iterations=6, strategy_interval=3)
    run = experiment.runs.get()
    control.start_experiment(experiment)
    drive(run)

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    iterations = list(run.iteration_set.order_by("index"))
    assert [it.index for it in iterations] == list(range(7))
    assert iterations[0].kind == IterationKind.BASELINE and iterations[0].val_bpb is not None
    assert run.proposals_done == 6
    assert run.outer_cycles.count() == 1  # after proposal 3 (the boundary at 6 is the end of the run)
    kept = [it for it in iterations if it.status == IterationStatus.KEEP]
    best = min(it.val_bpb for it in [iterations[0], *kept] if it.val_bpb is not None)
    assert run.best_val_bpb == pytest.approx(best)
    for it in iterations[1:]:
        assert it.changes and it.config and it.hypothesis
        assert it.overhead_seconds >= 0 and it.wall_seconds >= it.training_seconds


def test_strict_acceptance_keeps_exactly_the_improvements(redis_client: Any) -> None:
    run = make_experiment(iterations=8).runs.get()
    drive(run)
    judged = list(run.iteration_set.filter(kind=IterationKind.PROPOSAL).exclude(status=IterationStatus.CRASH))
    assert {it.status for it in judged} == {IterationStatus.KEEP, IterationStatus.DISCARD}  # both were decided
    for it in judged:
        assert it.val_bpb is not None and it.best_before is not None
        assert (it.status == IterationStatus.KEEP) == (it.val_bpb < it.best_before), it.decision_reason


def test_noise_aware_run_trains_r_baselines_and_reevaluates_candidates(redis_client: Any) -> None:
    run = make_experiment(iterations=8, acceptance_policy="noise_aware", baseline_repeats=3, noise_k=1.0).runs.get()
    drive(run)
    run.refresh_from_db()
    baselines = run.iteration_set.filter(kind__in=[IterationKind.BASELINE, IterationKind.BASELINE_REPEAT])
    assert baselines.count() == 3
    assert run.noise_sd is not None and run.noise_sd > 0
    kept = list(run.iteration_set.filter(kind=IterationKind.PROPOSAL, status=IterationStatus.KEEP))
    discarded = list(run.iteration_set.filter(kind=IterationKind.PROPOSAL, status=IterationStatus.DISCARD))
    assert kept and discarded  # both rules below are exercised
    for it in kept:
        assert len(it.evaluations) == 2, "a new best is re-evaluated before it is kept"
    for it in discarded:
        assert "σ" in it.decision_reason
        assert ("re-evaluated" in it.decision_reason) == (len(it.evaluations) == 2)


def test_pause_stops_after_the_step_and_resume_continues(redis_client: Any) -> None:
    run = make_experiment(iterations=5).runs.get()
    control.enqueue_step(run.pk)
    run.refresh_from_db()
    execute_step(run.pk, run.step_ticket, "w")  # the baseline
    control.pause_run(run)
    run.refresh_from_db()
    assert execute_step(run.pk, run.step_ticket, "w") == "not-claimed"
    assert run.iteration_set.count() == 1

    control.resume_run(run)
    drive(run)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.iteration_set.count() == 6
    with pytest.raises(control.TransitionError):
        control.pause_run(run)


def test_cancelled_run_takes_no_more_steps(redis_client: Any) -> None:
    run = make_experiment().runs.get()
    control.enqueue_step(run.pk)
    control.cancel_run(run)
    run.refresh_from_db()
    assert execute_step(run.pk, run.step_ticket, "w") == "not-claimed"
    assert run.status == RunStatus.CANCELLED and run.finished_at is not None


def test_state_is_rebuilt_from_the_database(redis_client: Any) -> None:
    run = make_experiment(groups=["B"], iterations=6, strategy_interval=2).runs.get()
    drive(run)
    state = RunState.load(Run.objects.get(pk=run.pk))
    view = state.view()
    assert len(view["trace"]) == 7
    assert view["best"]["val_bpb"] == pytest.approx(run.best_val_bpb if run.best_val_bpb else 0)
    assert view["frozen"] == state.outer_cycles[-1].frozen


def test_random_control_proposes_without_history(redis_client: Any) -> None:
    run = make_experiment(groups=["R"], iterations=5).runs.get()
    drive(run)
    proposals = run.iteration_set.filter(kind=IterationKind.PROPOSAL)
    assert proposals.count() == 5
    assert {it.proposal_source for it in proposals} == {"random"}
    assert run.outer_cycles.count() == 0


def test_a_run_whose_baseline_fails_while_paused_ends_failed_not_paused(redis_client: Any) -> None:
    run = make_experiment(budget_value=1.0).runs.get()  # a budget below one optimizer step: invalid_config
    control.enqueue_step(run.pk)
    run.refresh_from_db()
    assert claim_step(run.pk, run.step_ticket, "w")
    control.pause_run(run)  # the user pauses while the baseline trains
    from runs.engine.lease import LeaseKeeper
    from runs.engine.step import Step

    assert Step(run.pk, "w", LeaseKeeper(run.pk, "w")).run() == "baseline-failed"
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "baseline" in run.status_detail
