"""Mechanism review pages: permissions (anonymous, plain, reviewer), transitions, CSRF, escaping."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from mechanisms.models import AttachmentStatus, MechanismAttachment, MechanismEvent
from runs.models import Experiment, Run
from tests.dashboard_review.factories import CODE_V1, HOSTILE, make_attachment, make_run

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/mechanisms/review/", "/mechanisms/library/", "/mechanisms/{id}/"])
def test_anonymous_is_sent_to_login(client: Client, path: str) -> None:
    attachment = make_attachment()
    response = client.get(path.format(id=attachment.pk))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_anonymous_post_changes_nothing(client: Client) -> None:
    attachment = make_attachment()
    response = client.post(f"/mechanisms/{attachment.pk}/approve/")
    assert response.status_code == 302
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING


def test_queue_lists_pending_attachments_with_ladder_status(client: Client, users: Any) -> None:
    pending = make_attachment()
    make_attachment(status=AttachmentStatus.ACTIVE, cycle=2)
    client.force_login(users.plain)
    html = client.get("/mechanisms/review/").content.decode()
    assert f'data-attachment="{pending.pk}"' in html
    assert html.count("data-attachment=") == 1
    assert "passed 4 steps" in html and "review experiment" in html
    # The badge counts only reviews that hold a run up.
    assert 'id="pending-count"' not in html
    Run.objects.filter(pk=pending.run_id).update(status="awaiting_review")
    html = client.get("/mechanisms/review/").content.decode()
    assert '<span class="badge" id="pending-count">1</span>' in html
    assert "yes: the run waits" in html


def test_queue_filters_open_stale_and_decided(client: Client, users: Any) -> None:
    from django.utils import timezone

    open_one = make_attachment()
    stale = make_attachment(cycle=2)
    Run.objects.filter(pk=stale.run_id).update(status="cancelled", finished_at=timezone.now())
    decided = make_attachment(status=AttachmentStatus.REJECTED, cycle=3)
    MechanismAttachment.objects.filter(pk=decided.pk).update(reviewed_at=timezone.now(), reviewed_by=users.reviewer)
    client.force_login(users.plain)
    for show, expected in (("open", open_one), ("stale", stale), ("decided", decided)):
        html = client.get(f"/mechanisms/review/?show={show}").content.decode()
        assert f'data-attachment="{expected.pk}"' in html, show
        assert html.count("data-attachment=") == 1, show
    client.force_login(users.reviewer)
    page = client.get(f"/mechanisms/{stale.pk}/").content.decode()
    assert 'id="stale-note"' in page and 'id="approve-button"' not in page
    response = client.post(f"/mechanisms/{stale.pk}/approve/", {"comment": ""})
    assert response.status_code == 400
    stale.refresh_from_db()
    assert stale.status == AttachmentStatus.PENDING


def test_review_page_shows_everything_escaped(client: Client, users: Any) -> None:
    run = make_run()
    first = make_attachment(run=run, code=CODE_V1, status=AttachmentStatus.REJECTED, cycle=1)
    second = make_attachment(run=run, cycle=2)
    client.force_login(users.reviewer)
    html = client.get(f"/mechanisms/{second.pk}/").content.decode()
    assert HOSTILE not in html and "&lt;script&gt;" in html
    for title in ("Explore", "Critique", "Specify", "Generate code"):
        assert title in html
    assert 'class="highlight"' in html  # pygments
    assert f'href="/mechanisms/{first.pk}/"' in html  # diff against the previous version
    assert 'id="mechanism-diff"' in html and "seen" in html
    assert "paper_A1" in html and "proposal_rejected: 3" in html
    assert "Changes the engine would refuse (not counted above): <strong>2</strong>" in html
    assert "refused proposals: 2" in html and "#7 refused: proposed DEPTH 4→5, but &lt;script&gt;" in html
    assert 'id="approve-button"' in html and 'id="reject-button"' in html
    assert "ladder passed" in html  # event history
    assert "1200 / 300" in html  # the session's LLM call


def test_first_version_says_so(client: Client, users: Any) -> None:
    attachment = make_attachment()
    client.force_login(users.plain)
    assert "First version" in client.get(f"/mechanisms/{attachment.pk}/").content.decode()


def test_plain_user_sees_no_buttons_and_cannot_approve(client: Client, users: Any) -> None:
    attachment = make_attachment()
    client.force_login(users.plain)
    html = client.get(f"/mechanisms/{attachment.pk}/").content.decode()
    assert "approve-button" not in html and "reject-button" not in html and 'id="read-only-note"' in html
    for action in ("approve", "reject", "kill"):
        response = client.post(f"/mechanisms/{attachment.pk}/{action}/", {"comment": "no"})
        assert response.status_code == 403
        assert "do not have permission" in response.content.decode()
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING
    assert not MechanismEvent.objects.filter(attachment=attachment, to_status="approved").exists()


def test_reviewer_approves_then_kills(client: Client, users: Any) -> None:
    attachment = make_attachment()
    client.force_login(users.reviewer)
    response = client.post(f"/mechanisms/{attachment.pk}/approve/", {"comment": "looks right"})
    assert response.status_code == 302
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.APPROVED and attachment.reviewed_by == users.reviewer
    assert attachment.review_comment == "looks right"
    event = attachment.events.get(to_status="approved")
    assert event.actor == users.reviewer and event.from_status == "pending"
    # Approving twice is a clear 400, not a second transition.
    again = client.post(f"/mechanisms/{attachment.pk}/approve/")
    assert again.status_code == 400 and "cannot become approved" in again.content.decode()
    MechanismAttachment.objects.filter(pk=attachment.pk).update(status=AttachmentStatus.ACTIVE)
    html = client.get(f"/mechanisms/{attachment.pk}/").content.decode()
    assert 'id="kill-button"' in html and "approve-button" not in html
    assert client.post(f"/mechanisms/{attachment.pk}/kill/", {"comment": "misbehaves"}).status_code == 302
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.DEACTIVATED


def test_reject_needs_a_comment(client: Client, users: Any) -> None:
    attachment = make_attachment()
    client.force_login(users.reviewer)
    response = client.post(f"/mechanisms/{attachment.pk}/reject/", {"comment": "   "})
    assert response.status_code == 400 and "needs a comment" in response.content.decode()
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING
    assert client.post(f"/mechanisms/{attachment.pk}/reject/", {"comment": "unsafe"}).status_code == 302
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.REJECTED and attachment.review_comment == "unsafe"


def test_csrf_is_enforced(users: Any) -> None:
    attachment = make_attachment()
    client = Client(enforce_csrf_checks=True)
    client.force_login(users.reviewer)
    assert client.post(f"/mechanisms/{attachment.pk}/approve/").status_code == 403
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING
    page = client.get(f"/mechanisms/{attachment.pk}/")
    token = page.cookies["csrftoken"].value
    assert client.post(f"/mechanisms/{attachment.pk}/approve/", {"csrfmiddlewaretoken": token}).status_code == 302
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.APPROVED


def test_reference_experiments_are_read_only(client: Client, users: Any) -> None:
    attachment = make_attachment(run=make_run(reference=True))
    client.force_login(users.reviewer)
    assert "approve-button" not in client.get(f"/mechanisms/{attachment.pk}/").content.decode()
    assert client.post(f"/mechanisms/{attachment.pk}/approve/").status_code == 403
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING


def test_library_lists_validated_mechanisms_and_attaches_to_an_experiment(client: Client, users: Any) -> None:
    attachment = make_attachment(status=AttachmentStatus.ACTIVE)
    target = Experiment.objects.create(name="target", groups=["A"])
    client.force_login(users.plain)
    html = client.get("/mechanisms/library/").content.decode()
    assert f'data-mechanism="{attachment.mechanism_id}"' in html and "Attach</button>" not in html
    assert client.post(f"/mechanisms/library/{attachment.mechanism_id}/attach/",
                       {"experiment": target.pk}).status_code == 403
    assert not target.library_mechanisms.exists()
    client.force_login(users.reviewer)
    assert "Attach</button>" in client.get("/mechanisms/library/").content.decode()
    response = client.post(f"/mechanisms/library/{attachment.mechanism_id}/attach/", {"experiment": target.pk})
    assert response.status_code == 302
    assert list(target.library_mechanisms.all()) == [attachment.mechanism]


def test_unknown_attachment_is_404(client: Client, users: Any) -> None:
    client.force_login(users.reviewer)
    assert client.get("/mechanisms/999999/").status_code == 404
    assert client.post("/mechanisms/999999/approve/").status_code == 404
