"""Level 2 end to end through a real Celery worker: session → validated mechanism → review → firing."""

from __future__ import annotations

from typing import Any

import pytest

from mechanisms import lifecycle
from mechanisms.models import AttachmentStatus, MechanismAttachment, SessionStatus
from runs.engine import control
from runs.engine.mechanism_bridge import runtime_name
from runs.engine.step import execute_step
from runs.models import Run, RunStatus
from tests.conftest import ServiceProcess
from tests.engine.helpers import make_experiment
from tests.polling import wait_until

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def attachment_of(run: Run) -> MechanismAttachment | None:
    return MechanismAttachment.objects.filter(run=run).select_related("mechanism").first()


def test_review_gate_holds_a_validated_mechanism_until_approved_then_it_fires(
    celery_worker: ServiceProcess, users: Any
) -> None:
    experiment = make_experiment(groups=["C"], iterations=200, strategy_interval=4, research_interval=1)
    run = experiment.runs.get()
    control.start_experiment(experiment)

    wait_until(lambda: attachment_of(run) is not None, 120, "the first research session to attach a mechanism")
    attachment = attachment_of(run)
    assert attachment is not None
    session = attachment.session
    assert session is not None
    assert session.status == SessionStatus.PRODUCED, session.status_detail
    assert [r["round"] for r in session.artifacts["rounds"] if r["error"] is None] == [
        "explore",
        "critique",
        "specify",
        "generate",
    ]
    assert attachment.status == AttachmentStatus.PENDING
    assert [step["step"] for step in attachment.ladder] == ["spec", "static", "import", "dry_run"]
    assert all(step["ok"] for step in attachment.ladder)

    # Level 2 is a step: the run waits for the review, holding no worker and no lease.
    name = runtime_name(attachment)
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.AWAITING_REVIEW, 60, "the run to await review")
    waiting = Run.objects.get(pk=run.pk)
    assert waiting.lease_owner == "" and waiting.proposals_done == 4
    assert execute_step(run.pk, waiting.step_ticket, "test") == "not-claimed"
    paused_at = run.iteration_set.count()
    assert paused_at == 5  # baseline + K proposals, nothing after the boundary
    lifecycle.approve(attachment, users.reviewer, "looks right")  # re-queues the run at once

    def fired() -> bool:
        return any(name in (it.hook_calls or {}) for it in run.iteration_set.filter(index__gte=paused_at))

    wait_until(fired, 60, "the approved mechanism to be called")
    assert run.iteration_set.filter(index=paused_at).exists()
    control.cancel_run(Run.objects.get(pk=run.pk))

    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.RETIRED  # active until the run ended: retired with it
    assert attachment.activated_at_iteration == paused_at
    assert sum(attachment.hook_calls.values()) > 0
    transitions = list(attachment.events.values_list("from_status", "to_status", "actor__username"))
    assert transitions == [
        ("validating", "pending", None),
        ("pending", "approved", "reviewer"),
        ("approved", "active", None),
        ("active", "retired", None),
    ]
    first_active = run.iteration_set.get(index=paused_at)
    assert name in first_active.hook_calls
    for effect in first_active.mechanism_effects:
        assert effect["mechanism"] == name and effect["effect"] in (
            "prompt_added",
            "restricted",
            "proposal_replaced",
            "proposal_rejected",
            "acceptance_overridden",
        )


def test_a_plain_user_cannot_approve_and_the_kill_switch_stops_a_mechanism(
    celery_worker: ServiceProcess, users: Any
) -> None:
    experiment = make_experiment(
        groups=["D"], iterations=200, strategy_interval=3, research_interval=1, review_gate=False
    )
    run = experiment.runs.get()
    control.start_experiment(experiment)
    wait_until(
        lambda: MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.ACTIVE).exists(),
        120,
        "a mechanism to activate without review (gate off)",
    )
    attachment = MechanismAttachment.objects.get(run=run, status=AttachmentStatus.ACTIVE)
    with pytest.raises(lifecycle.ReviewError):
        lifecycle.kill(attachment, users.plain, "not allowed")

    lifecycle.kill(attachment, users.reviewer, "enough")
    attachment.refresh_from_db()
    killed_at = run.iteration_set.count()
    name = runtime_name(attachment)
    wait_until(lambda: run.iteration_set.count() > killed_at + 2, 60, "more iterations after the kill")
    control.cancel_run(Run.objects.get(pk=run.pk))
    assert attachment.status == AttachmentStatus.DEACTIVATED
    after = run.iteration_set.filter(index__gt=killed_at)
    assert after.exists() and not any(name in (it.hook_calls or {}) for it in after)
