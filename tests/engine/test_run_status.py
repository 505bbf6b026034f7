"""A run's status changes in one module (runs/engine/run_status.py), along allowed edges only, and live
pages hear of a change only once it has committed."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, cast

import pytest
from django.db import transaction

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment
from runs.engine import control, events, run_status
from runs.engine.lease import LeaseKeeper, claim_step
from runs.engine.mechanism_bridge import RuntimeHandle, runtime_name
from runs.engine.proposals import Proposed
from runs.engine.recording import record_iteration
from runs.engine.state import RunState
from runs.engine.step import execute_step
from runs.engine.step_context import StepAborted, StepContext
from runs.models import IterationKind, IterationStatus, Run, RunStatus
from tests.engine.helpers import make_experiment

pytestmark = [pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[events.RunEvent]:
    """Every event that actually leaves for the channel layer, in order."""
    delivered: list[events.RunEvent] = []
    monkeypatch.setattr(events, "_send", lambda run_id, event: delivered.append(event))
    return delivered


class _FailingHookRuntime:
    """What a runtime reports after a mechanism's hook failed during the step: deactivate it (recording reads
    these fields of a runtime, after its end-of-step check of the hosts)."""

    def __init__(self, attachment: MechanismAttachment) -> None:
        self.effects: list[dict[str, Any]] = []
        self.hook_calls: dict[str, dict[str, int]] = {}
        self.deactivated = [{"mechanism": runtime_name(attachment), "hook": "propose", "reason": "it raised"}]
        self.active: set[str] = set()  # its one mechanism failed

    def check_hosts(self) -> None:
        """Its host is not checked again here: the failure is already reported."""


def test_a_rolled_back_step_publishes_nothing(sent: list[events.RunEvent]) -> None:
    """The iteration's commit fails (another worker recorded it): the mechanism's deactivation inside the
    same transaction rolls back, and no page is told of it or of the iteration."""
    run = make_experiment().runs.get()
    assert execute_step(run.pk, run.step_ticket, "first") == IterationKind.BASELINE
    mechanism = Mechanism.objects.create(code_hash="rolled-back", name="tabu", code="", origin="builtin-catalogue")
    attachment = MechanismAttachment.objects.create(run=run, mechanism=mechanism, status=AttachmentStatus.ACTIVE)
    run.refresh_from_db()
    assert claim_step(run.pk, run.step_ticket, "second")
    run.refresh_from_db()
    ctx = StepContext(run=run, state=RunState.load(run), owner="second", keeper=LeaseKeeper(run.pk, "second"))
    run.iteration_set.create(index=ctx.state.next_index, kind=IterationKind.PROPOSAL,
                             status=IterationStatus.DISCARD, config={})  # the other worker's commit
    sent.clear()

    with pytest.raises(StepAborted, match="already recorded"):
        record_iteration(ctx, kind=IterationKind.PROPOSAL, config={}, summary=None,
                         status=IterationStatus.INVALID_PROPOSAL, proposed=Proposed(),
                         runtime=cast(RuntimeHandle, _FailingHookRuntime(attachment)))

    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.ACTIVE  # the deactivation was rolled back...
    assert sent == []  # ...and nobody heard of it


def test_an_event_waits_for_the_commit_and_is_dropped_with_a_rollback(sent: list[events.RunEvent]) -> None:
    run = make_experiment().runs.get()
    with transaction.atomic():
        assert run_status.change_status(run.pk, (RunStatus.QUEUED,), RunStatus.PAUSED, "paused by a test")
        assert sent == []  # not yet committed
    assert sent == [events.status_event(run.pk, RunStatus.PAUSED, "paused by a test")]

    sent.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        control.resume_run(Run.objects.get(pk=run.pk))
        raise RuntimeError("the request failed after the resume")
    assert Run.objects.get(pk=run.pk).status == RunStatus.PAUSED
    assert sent == []


def test_only_allowed_edges_are_taken() -> None:
    run = make_experiment().runs.get()
    with pytest.raises(ValueError, match="cannot go from completed to running"):
        run_status.change_status(run.pk, (RunStatus.COMPLETED,), RunStatus.RUNNING, "revived")
    with pytest.raises(ValueError, match="only through end_run"):
        run_status.change_status(run.pk, (RunStatus.QUEUED,), RunStatus.COMPLETED, "done")
    with pytest.raises(ValueError, match="does not end a run"):
        run_status.end_run(run.pk, RunStatus.PAUSED, "paused")
    # A run that is not in the given sources does not move (the conditional UPDATE found no row).
    assert not run_status.change_status(run.pk, (RunStatus.PAUSED,), RunStatus.QUEUED, "resumed")
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED
    # Every status has its edges written down, and the final ones have none.
    assert set(run_status.EDGES) == set(RunStatus.values)
    assert all(not run_status.EDGES[status] for status in run_status.ENDINGS)


def test_ending_a_run_sets_its_finish_time_retires_its_mechanisms_and_says_so_once(
    sent: list[events.RunEvent],
) -> None:
    run = make_experiment().runs.get()
    mechanism = Mechanism.objects.create(code_hash="ends", name="tabu", code="", origin="builtin-catalogue")
    attachment = MechanismAttachment.objects.create(run=run, mechanism=mechanism, status=AttachmentStatus.ACTIVE)

    assert run_status.end_run(run.pk, RunStatus.CANCELLED, "cancelled by a test")
    assert not run_status.end_run(run.pk, RunStatus.FAILED, "too late")  # a final status is final

    run.refresh_from_db()
    attachment.refresh_from_db()
    assert (run.status, run.status_detail) == (RunStatus.CANCELLED, "cancelled by a test")
    assert run.finished_at is not None
    assert attachment.status == AttachmentStatus.RETIRED
    assert [e for e in sent if e["type"] == "status"] == [
        events.status_event(run.pk, RunStatus.CANCELLED, "cancelled by a test")
    ]


def _status_writes(path: Path) -> list[str]:
    """Places in a file that set a status: `.update(status=...)`, `x.status = ...`, or a create with a status
    other than the one every run starts in (queued)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            status = next((keyword.value for keyword in node.keywords if keyword.arg == "status"), None)
            if status is None:
                continue
            born_queued = node.func.attr == "create" and ast.unparse(status) == "RunStatus.QUEUED"
            if node.func.attr in ("update", "create", "update_or_create", "get_or_create") and not born_queued:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}(status=...)")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Attribute) and target.attr == "status"
                        and "run" in ast.unparse(target.value).lower()):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(target)} = ...")
    return found


def test_only_run_status_writes_a_runs_status() -> None:
    """No module of runs/ but engine/run_status.py sets Run.status (the paper import creates reference runs that
    are born completed and never change: a creation, not a transition)."""
    born_completed = ROOT / "runs" / "analysis" / "paper_import.py"
    writers = [
        write
        for path in sorted((ROOT / "runs").rglob("*.py"))
        if "migrations" not in path.parts and path not in (ROOT / "runs" / "engine" / "run_status.py", born_completed)
        for write in _status_writes(path)
    ]
    assert writers == []
    assert len(_status_writes(born_completed)) == 1
    # The check sees a write when there is one.
    assert _status_writes(ROOT / "runs" / "engine" / "run_status.py")
