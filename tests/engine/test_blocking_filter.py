"""A mechanism whose filter blocks the search in a real run is deactivated, and the run goes on.

The ladder refuses filters that reject most recorded proposals (tests/mechanisms_core/test_ladder.py); this is
the engine's own guard for a filter that meets a run it blocks: two iterations in a row with every ask
rejected by the same mechanism, and it is switched off with the reason.
"""

from __future__ import annotations

import hashlib

import pytest
from django.utils import timezone

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment
from mechanisms.text import MECHANISM_WORDS_LABEL
from runs.engine.proposals import MAX_PROPOSAL_ATTEMPTS
from runs.models import IterationKind, IterationStatus, Run
from tests.engine.helpers import drive, make_experiment

pytestmark = pytest.mark.django_db(transaction=True)

FILTER_CODE = '''class Gate:
    def filter(self, proposal, state):
        return {"reject": "closed"} if CLOSED else None
'''


def run_with_active_filter(closed: bool) -> tuple[Run, MechanismAttachment]:
    experiment = make_experiment(groups=["A"], iterations=4, strategy_interval=10, review_gate=False)
    run = experiment.runs.get()
    code = f"CLOSED = {closed}\n\n{FILTER_CODE}"
    mechanism = Mechanism.objects.create(
        code_hash=hashlib.sha256(code.encode()).hexdigest(), name="gate", code=code, origin="llm",
        passed_ladder=True, spec={"name": "gate", "class_name": "Gate", "hooks": ["filter"]})
    attachment = MechanismAttachment.objects.create(run=run, mechanism=mechanism, status=AttachmentStatus.ACTIVE,
                                                    activated_at=timezone.now())
    return run, attachment


def test_a_filter_rejecting_every_ask_of_two_iterations_is_deactivated_and_the_run_goes_on() -> None:
    run, attachment = run_with_active_filter(closed=True)
    drive(run)

    proposals = list(run.iteration_set.filter(kind=IterationKind.PROPOSAL).order_by("index"))
    assert [p.status for p in proposals[:2]] == [IterationStatus.INVALID_PROPOSAL] * 2
    for blocked in proposals[:2]:
        assert len(blocked.rejected_attempts) == MAX_PROPOSAL_ATTEMPTS
        assert all(a["reason"] == f"rejected by mechanism gate#{attachment.pk}; {MECHANISM_WORDS_LABEL}: \"closed\""
                   for a in blocked.rejected_attempts)
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.DEACTIVATED
    assert attachment.deactivated_at_iteration == proposals[1].index
    assert "rejected every proposal of 2 iterations in a row: it blocks the search" in attachment.status_detail
    assert all(p.status != IterationStatus.INVALID_PROPOSAL for p in proposals[2:]) and len(proposals) == 4


def test_a_filter_that_lets_proposals_through_stays_on_to_the_end() -> None:
    run, attachment = run_with_active_filter(closed=False)
    drive(run)
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.RETIRED and attachment.deactivated_at_iteration is None
    assert not run.iteration_set.filter(status=IterationStatus.INVALID_PROPOSAL).exists()
