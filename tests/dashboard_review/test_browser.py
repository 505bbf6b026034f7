"""In Chromium against the real ASGI server: approving a mechanism, read-only view, comparison numbers."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from mechanisms.models import AttachmentStatus, MechanismAttachment
from runs.models import Run
from tests.conftest import LiveServer, log_in
from tests.dashboard_review.factories import make_attachment
from tests.stats.factories import make_experiment

pytestmark = [pytest.mark.browser, pytest.mark.services]
SHOTS = Path(os.environ.get("BILEVEL_SCREENSHOTS", "/tmp/shots"))


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_reviewer_approves_a_pending_mechanism(asgi_server: LiveServer, page: Any, users: Any) -> None:
    attachment = make_attachment()
    Run.objects.filter(pk=attachment.run_id).update(status="awaiting_review")  # the run waits for this review
    log_in(page, asgi_server, users.reviewer.username)
    page.goto(f"{asgi_server.url}/mechanisms/review/")
    assert page.locator("#pending-count").inner_text() == "1"
    page.click(f"tr[data-attachment='{attachment.pk}'] a >> nth=0")
    page.wait_for_url(f"{asgi_server.url}/mechanisms/{attachment.pk}/")
    assert page.locator("#attachment-status").get_attribute("data-status") == "pending"
    _shot(page, "review-pending")
    page.fill("#approve-form textarea[name=comment]", "hooks look right")
    page.click("#approve-button")
    page.wait_for_selector("#attachment-status[data-status='approved']")
    assert "Approved Tabu" in page.locator(".messages").inner_text()
    assert page.locator("#approve-button").count() == 0
    assert page.locator("#kill-button").count() == 1
    assert "hooks look right" in page.locator("#event-history").inner_text()
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.APPROVED and attachment.reviewed_by == users.reviewer
    # The engine activates it at the next iteration; the page shows the new state on reload.
    MechanismAttachment.objects.filter(pk=attachment.pk).update(status=AttachmentStatus.ACTIVE)
    page.reload()
    page.wait_for_selector("#attachment-status[data-status='active']")
    _shot(page, "review-active")


def test_non_reviewer_sees_no_buttons(asgi_server: LiveServer, page: Any, users: Any) -> None:
    attachment = make_attachment()
    log_in(page, asgi_server, users.plain.username)
    page.goto(f"{asgi_server.url}/mechanisms/{attachment.pk}/")
    page.wait_for_selector("#read-only-note")
    assert page.locator("#approve-button").count() == 0
    assert page.locator("#reject-button").count() == 0
    assert page.locator("#kill-button").count() == 0
    assert "<script>" in (page.locator("#artifact-explore").text_content() or "")  # text, not run
    _shot(page, "review-read-only")


def test_comparison_table_matches_the_database(asgi_server: LiveServer, page: Any, users: Any) -> None:
    experiment = make_experiment(groups=("R", "A", "C"), repeats=3, iterations=12)
    log_in(page, asgi_server, users.plain.username)
    page.goto(f"{asgi_server.url}/experiments/{experiment.pk}/compare/")
    page.wait_for_selector("#compare-chart[data-ready='1']")
    for group in ("R", "A", "C"):
        runs = Run.objects.filter(experiment=experiment, group=group)
        deltas = [r.best_val_bpb - r.baseline_val_bpb for r in runs]  # type: ignore[operator]
        row = page.locator(f"#summary-table tr[data-group='{group}']")
        assert row.locator("[data-field=n]").inner_text().strip() == "3"
        assert row.locator("[data-field=delta]").inner_text() == f"{statistics.mean(deltas):+.5f}"
        assert row.locator("[data-field=delta_sd]").inner_text() == f"{statistics.stdev(deltas):.5f}"
        baselines = [r.baseline_val_bpb for r in runs]
        assert row.locator("[data-field=baseline]").inner_text() == f"{statistics.mean(baselines):.5f}"  # type: ignore[type-var]
    _shot(page, "compare-delta")
    page.check("#chart-toggles input[value=absolute]")
    page.wait_for_selector("#compare-chart[data-scale='absolute']")
    _shot(page, "compare-absolute")
