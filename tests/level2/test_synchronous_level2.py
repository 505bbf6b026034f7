"""Level 2 as a synchronous step of the outer loop, driven step by step in this process.

The run waits at a Level 2 boundary (researching, then awaiting review with the gate on), holds
no lease while it waits, and cannot be stepped; a decision (or the review timeout) re-queues it
and the next iteration uses the outcome. Same seeds + same decisions → same trace; and a group
with Level 2 follows its Level-1 twin exactly until a mechanism first changes a decision.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from mechanisms import lifecycle
from mechanisms.models import AttachmentStatus, MechanismAttachment, ResearchSession, SessionStatus
from runs.engine.control import cancel_run
from runs.engine.level2 import execute_research_session, expire_reviews
from runs.engine.step import execute_step
from runs.models import Iteration, Run, RunStatus
from tests.engine.helpers import make_experiment

# on_commit callbacks (resuming a run after a decision) must run: real transactions.
pytestmark = pytest.mark.django_db(transaction=True)

Decide = Callable[[MechanismAttachment], object]
DECISION_CHANGING = ("restricted", "proposal_replaced", "proposal_rejected", "acceptance_overridden")


def drive(run: Run, decide: Decide | None = None, max_steps: int = 400) -> list[str]:
    """Step the run as workers would; run its Level 2 sessions here; let ``decide`` review what is pending."""
    outcomes: list[str] = []
    for _ in range(max_steps):
        run.refresh_from_db()
        if run.is_finished:
            return outcomes
        if run.status == RunStatus.RESEARCHING:
            session = ResearchSession.objects.get(run=run, status=SessionStatus.RUNNING)
            outcomes.append(f"session: {execute_research_session(session.pk)}")
        elif run.status == RunStatus.AWAITING_REVIEW:
            assert decide is not None, "the run waits for a review this test does not give"
            for attachment in MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.PENDING):
                decide(attachment)
            outcomes.append("decided")
        else:
            outcomes.append(execute_step(run.pk, run.step_ticket, "test"))
    raise AssertionError(f"run {run.pk} did not finish in {max_steps} steps: {outcomes[-5:]}")


def trace(run: Run) -> list[tuple[Any, ...]]:
    return [
        (it.index, it.kind, it.changes, it.val_bpb, it.status, it.proposal_source, it.hook_calls,
         [(e["mechanism"].split("#")[0], e["effect"], e["detail"]) for e in it.mechanism_effects])
        for it in Iteration.objects.filter(run=run).order_by("index")
    ]


def strip_attachment_ids(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Hook calls are keyed by 'name#attachment id'; ids differ between two experiments."""
    return [(*row[:6], {k.split("#")[0]: v for k, v in row[6].items()}, row[7]) for row in rows]


def test_the_gate_holds_the_run_until_a_reviewer_approves(users: Any) -> None:
    experiment = make_experiment(groups=["C"], iterations=8, strategy_interval=3, research_interval=1)
    run = experiment.runs.get()
    outcomes: list[str] = []
    for _ in range(40):
        run.refresh_from_db()
        if run.status == RunStatus.AWAITING_REVIEW:
            break
        if run.status == RunStatus.RESEARCHING:
            assert run.lease_owner == "" and run.waiting_since is not None
            session = ResearchSession.objects.get(run=run)
            outcomes.append(execute_research_session(session.pk))
        else:
            outcomes.append(execute_step(run.pk, run.step_ticket, "test"))
    assert run.status == RunStatus.AWAITING_REVIEW, outcomes
    proposals_before = run.proposals_done
    assert proposals_before == 3  # the boundary after K proposals
    pending = MechanismAttachment.objects.get(run=run, status=AttachmentStatus.PENDING)
    # Waiting holds no worker and no lease, and no step can be claimed, whatever ticket it carries.
    assert run.lease_owner == ""
    assert execute_step(run.pk, run.step_ticket, "test") == "not-claimed"
    assert execute_step(run.pk, run.step_ticket + 1, "test") == "not-claimed"
    run.refresh_from_db()
    assert (run.status, run.proposals_done) == (RunStatus.AWAITING_REVIEW, proposals_before)

    ticket = run.step_ticket
    lifecycle.approve(pending, users.reviewer, "fine")
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.step_ticket == ticket + 1  # re-queued at once
    first_after = run.iteration_set.count()
    drive(run, decide=lambda a: lifecycle.approve(a, users.reviewer, ""))
    pending.refresh_from_db()
    assert pending.activated_at_iteration == first_after
    name = f"{pending.mechanism.name}#{pending.pk}"
    assert name in run.iteration_set.get(index=first_after).hook_calls
    assert not any(name in (it.hook_calls or {}) for it in run.iteration_set.filter(index__lt=first_after))
    assert pending.status == AttachmentStatus.RETIRED  # the run ended: retired with it


def test_rejecting_lets_the_run_continue_without_the_mechanism(users: Any) -> None:
    experiment = make_experiment(groups=["C"], iterations=6, strategy_interval=3, research_interval=1)
    run = experiment.runs.get()
    drive(run, decide=lambda a: lifecycle.reject(a, users.reviewer, "not convinced"))
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    rejected = MechanismAttachment.objects.filter(run=run)
    assert rejected.exists() and all(a.status == AttachmentStatus.REJECTED for a in rejected)
    assert all(not it.hook_calls for it in run.iteration_set.all())


def test_a_review_timeout_continues_without_the_mechanism_and_says_so() -> None:
    experiment = make_experiment(groups=["C"], iterations=6, strategy_interval=3, research_interval=1,
                                 review_timeout_minutes=5)
    run = experiment.runs.get()

    def nobody_reviews(attachment: MechanismAttachment) -> None:
        assert expire_reviews() == []  # not yet: the five minutes have not passed
        Run.objects.filter(pk=attachment.run_id).update(waiting_since=timezone.now() - timedelta(minutes=6))
        assert expire_reviews() == [attachment.run_id]

    drive(run, decide=nobody_reviews)
    timed_out = MechanismAttachment.objects.filter(run=run)
    assert timed_out.exists() and {a.status for a in timed_out} == {AttachmentStatus.REVIEW_TIMED_OUT}
    for attachment in timed_out:
        assert "not rejected by a person" in attachment.status_detail
        assert attachment.reviewed_by is None
    assert all(not it.hook_calls for it in run.iteration_set.all())


def test_a_stale_review_cannot_be_approved_and_the_command_decides(users: Any) -> None:
    experiment = make_experiment(groups=["C"], iterations=6, strategy_interval=3, research_interval=1)
    run = experiment.runs.get()
    with pytest.raises(AssertionError, match="waits for a review"):
        drive(run)
    pending = MechanismAttachment.objects.get(run=run, status=AttachmentStatus.PENDING)
    call_command("review_mechanism", str(pending.pk), "approve", "--as", users.reviewer.username)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    drive(run, decide=lambda a: None)  # its later sessions find nothing new to review: it completes

    # Another run is cancelled while its mechanism waits for a review: that review is stale.
    cancelled = make_experiment(groups=["C"], iterations=6, strategy_interval=3, research_interval=1).runs.get()
    with pytest.raises(AssertionError, match="waits for a review"):
        drive(cancelled)
    cancel_run(cancelled)
    (stale,) = MechanismAttachment.objects.filter(run=cancelled, status=AttachmentStatus.PENDING)
    assert lifecycle.is_stale(stale)
    with pytest.raises(lifecycle.ReviewError, match="add the mechanism to the library"):
        lifecycle.approve(stale, users.reviewer, "")
    stale.refresh_from_db()
    assert stale.status == AttachmentStatus.PENDING


def _twin_runs(groups: list[str], **fields: Any) -> list[Run]:
    experiment = make_experiment(groups=groups, iterations=24, strategy_interval=3, research_interval=1,
                                 review_gate=False, **fields)
    return list(experiment.runs.order_by("group"))


def test_group_d_follows_group_a_until_a_mechanism_first_changes_a_decision() -> None:
    run_a, run_d = _twin_runs(["A", "D"])
    assert run_a.seed == run_d.seed
    drive(run_a)
    drive(run_d)
    trace_a, trace_d = trace(run_a), trace(run_d)
    first = next((row[0] for row in trace_d if any(e[1] in DECISION_CHANGING for e in row[7])), None)
    assert first is not None, "no mechanism changed a decision: the test shows nothing"
    before = [row[:6] for row in trace_d if row[0] < first]
    assert before == [row[:6] for row in trace_a if row[0] < first]
    changed_d = next(row for row in trace_d if row[0] == first)
    changed_a = next(row for row in trace_a if row[0] == first)
    assert changed_d[2:5] != changed_a[2:5], (changed_a, changed_d)


def test_same_seeds_agent_objective_and_decisions_give_the_same_trace(users: Any) -> None:
    traces = []
    for _ in range(2):
        experiment = make_experiment(groups=["C"], iterations=9, strategy_interval=3, research_interval=1,
                                     seed_base=11)
        run = experiment.runs.get()
        drive(run, decide=lambda a: lifecycle.approve(a, users.reviewer, ""))
        traces.append(strip_attachment_ids(trace(run)))
    assert traces[0] == traces[1]
    assert any(row[6] for row in traces[0]), "no mechanism was active: the test shows nothing"


@pytest.mark.slow
def test_same_trace_on_the_real_trainer_with_a_flop_budget(users: Any) -> None:
    traces = []
    for _ in range(2):
        experiment = make_experiment(groups=["C"], iterations=2, strategy_interval=1, research_interval=1,
                                     objective="trainer", budget_value=1.2e11, threads=1, seed_base=5)
        run = experiment.runs.get()
        drive(run, decide=lambda a: lifecycle.approve(a, users.reviewer, ""))
        traces.append(strip_attachment_ids(trace(run)))
    assert traces[0] == traces[1]
    assert len(traces[0]) == 3 and all(row[3] is not None for row in traces[0])
