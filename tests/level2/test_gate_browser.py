"""The review gate in Chromium, with a real Celery worker and the ASGI server: the run reaches
"awaiting review", makes no progress while it waits, and continues from the next iteration once
the reviewer approves on the page; the approved mechanism's hook calls then show in the table."""

from __future__ import annotations

from typing import Any

import pytest

from mechanisms.models import AttachmentStatus, MechanismAttachment
from runs.engine import control
from runs.engine.step import execute_step
from runs.models import Run, RunStatus
from tests.conftest import LiveServer, ServiceProcess, log_in
from tests.dashboard_runs.test_browser import expect
from tests.engine.helpers import make_experiment
from tests.polling import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_awaiting_review_holds_the_run_and_approval_on_the_page_resumes_it(
    asgi_server: LiveServer, celery_worker: ServiceProcess, page: Any, users: Any
) -> None:
    experiment = make_experiment(name="gate in the browser", groups=["C"], iterations=6, strategy_interval=3,
                                 research_interval=1)
    run = experiment.runs.get()
    log_in(page, asgi_server, users.reviewer.username)
    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    control.start_experiment(experiment)

    page.wait_for_selector("#run-status.status-awaiting_review", timeout=120_000)
    page.wait_for_selector("#run-waiting-links a")  # live, over the socket
    assert page.locator("#run-waiting").is_visible()
    page.reload()  # the navigation badge is drawn by the server
    page.wait_for_selector("#run-waiting-links a")
    assert page.locator("#pending-count").inner_text() == "1"  # the badge counts reviews that block a run
    # While it waits there is no time-left estimate, only how long it has been waiting.
    expect(page.locator("#progress-time")).to_contain_text("waiting for a review for ")
    expect(page.locator("#progress-time")).not_to_contain_text("left")

    waiting = Run.objects.get(pk=run.pk)
    held_at = waiting.iteration_set.count()
    assert (waiting.status, waiting.lease_owner, waiting.proposals_done) == (RunStatus.AWAITING_REVIEW, "", 3)
    # No progress while waiting: nothing holds the run, and no step can be claimed.
    assert execute_step(run.pk, waiting.step_ticket, "test") == "not-claimed"
    assert Run.objects.get(pk=run.pk).iteration_set.count() == held_at

    page.click("#run-waiting-links a >> nth=0")
    page.wait_for_selector("#approve-button")
    page.fill("#approve-form textarea[name=comment]", "ship it")
    page.click("#approve-button")
    # Approved, and maybe already activated by the worker the approval re-queued the run on.
    page.wait_for_selector("#attachment-status[data-status='approved'], #attachment-status[data-status='active'], "
                           "#attachment-status[data-status='retired']")
    attachment = MechanismAttachment.objects.filter(run=run).order_by("created_at").first()
    assert attachment is not None and attachment.reviewed_by == users.reviewer

    wait_until(lambda: Run.objects.get(pk=run.pk).iteration_set.filter(index=held_at).exists(), 60,
             "the run to continue after the approval")
    attachment.refresh_from_db()
    assert attachment.status in (AttachmentStatus.ACTIVE, AttachmentStatus.RETIRED)
    assert attachment.activated_at_iteration == held_at

    page.goto(f"{asgi_server.url}/runs/{run.pk}/")
    cell = page.locator(f"#iteration-table tr[data-index='{held_at}'] td.mechanisms")
    cell.wait_for()
    text = cell.inner_text()
    assert attachment.mechanism.name in text
    for hook in (attachment.mechanism.spec.get("hooks") or []):
        if hook != "on_result":  # the first active iteration has no earlier result of its own to see
            assert hook in text, (hook, text)
    earlier = page.locator(f"#iteration-table tr[data-index='{held_at - 1}'] td.mechanisms").inner_text()
    assert attachment.mechanism.name not in earlier
