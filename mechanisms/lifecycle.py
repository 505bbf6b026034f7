"""Transitions of a mechanism attached to a run, each stored as a MechanismEvent (who, when, why).

validating → invalid | pending (review gate on) | approved (gate off)
pending → approved | rejected            (a person with mechanisms.review_mechanism, while the run lives)
pending → review timed out               (the experiment's review timeout passed; never "rejected")
approved → active                        (the engine, at the next iteration boundary)
active → deactivated                     (kill switch, or the runtime after a hook failed)
active | approved → retired              (the run ended: retired with the run)

A pending review of a run that has ended is *stale*: it can no longer act on that run, so it
cannot be approved; the mechanism can be added to the library instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.db import transaction
from django.utils import timezone

from .models import AttachmentStatus, MechanismAttachment, MechanismEvent
from .signals import attachment_changed

REVIEW_PERMISSION = "mechanisms.review_mechanism"


class ReviewError(Exception):
    """The action is not allowed for this user or in this state."""


def transition(
    attachment: MechanismAttachment,
    allowed_from: tuple[str, ...],
    to_status: str,
    *,
    actor: Any = None,
    note: str = "",
    at_iteration: int | None = None,
    **fields: Any,
) -> MechanismAttachment:
    """Move attachment to `to_status` if it is still in one of `allowed_from` (a conditional UPDATE)."""
    with transaction.atomic():
        updated = MechanismAttachment.objects.filter(pk=attachment.pk, status__in=allowed_from).update(
            status=to_status, **fields
        )
        if not updated:
            attachment.refresh_from_db(fields=["status"])
            raise ReviewError(
                f"mechanism {attachment.mechanism.name} is {attachment.get_status_display().lower()}; "
                f"it cannot become {to_status}"
            )
        from_status = attachment.status
        attachment.refresh_from_db()
        MechanismEvent.objects.create(
            attachment=attachment,
            from_status=from_status,
            to_status=to_status,
            actor=actor if actor is not None and actor.is_authenticated else None,
            note=note,
            at_iteration=at_iteration,
        )
    attachment_changed.send(MechanismAttachment, attachment=attachment, from_status=from_status,
                            to_status=to_status, note=note)
    return attachment


def _require_reviewer(user: Any) -> None:
    if not user.has_perm(REVIEW_PERMISSION):
        raise ReviewError("you do not have permission to review mechanisms")


def is_stale(attachment: MechanismAttachment) -> bool:
    """A pending review whose run has ended: approving it could no longer change anything."""
    return attachment.status == AttachmentStatus.PENDING and attachment.run.finished_at is not None


def approve(attachment: MechanismAttachment, user: Any, comment: str = "") -> MechanismAttachment:
    _require_reviewer(user)
    if is_stale(attachment):
        raise ReviewError(f"run {attachment.run_id} has ended, so approving {attachment.mechanism.name} would not "
                          f"act on it; add the mechanism to the library to use it in other runs")
    return transition(
        attachment, (AttachmentStatus.PENDING,), AttachmentStatus.APPROVED, actor=user, note=comment,
        reviewed_by=user, reviewed_at=timezone.now(), review_comment=comment,
    )


def reject(attachment: MechanismAttachment, user: Any, comment: str) -> MechanismAttachment:
    _require_reviewer(user)
    if not comment.strip():
        raise ReviewError("a rejection needs a comment saying why")
    return transition(
        attachment, (AttachmentStatus.PENDING,), AttachmentStatus.REJECTED, actor=user, note=comment,
        reviewed_by=user, reviewed_at=timezone.now(), review_comment=comment,
    )


def kill(attachment: MechanismAttachment, user: Any, reason: str = "") -> MechanismAttachment:
    """The kill switch: stop an active (or approved, not yet active) mechanism for this run."""
    _require_reviewer(user)
    return transition(
        attachment, (AttachmentStatus.ACTIVE, AttachmentStatus.APPROVED), AttachmentStatus.DEACTIVATED,
        actor=user, note=reason or "kill switch", status_detail=f"deactivated by {user}: {reason or 'kill switch'}",
    )


def time_out_review(attachment: MechanismAttachment, minutes: int) -> MechanismAttachment:
    """The experiment's review timeout passed: the run goes on without this mechanism (no person decided)."""
    return transition(
        attachment, (AttachmentStatus.PENDING,), AttachmentStatus.REVIEW_TIMED_OUT,
        note=f"no review decision within {minutes} min; the run continued without it",
        status_detail=f"review timed out after {minutes} min (the experiment's policy); not rejected by a person",
    )


def retire_with_run(attachment: MechanismAttachment, at_iteration: int | None) -> MechanismAttachment:
    return transition(
        attachment, (AttachmentStatus.ACTIVE, AttachmentStatus.APPROVED), AttachmentStatus.RETIRED,
        note="the run ended", at_iteration=at_iteration, status_detail="retired with the run",
    )


def retire_run_mechanisms(run_id: int) -> None:
    """The run ended: its active and approved mechanisms retire with it (pending reviews become stale)."""
    for attachment in MechanismAttachment.objects.filter(
        run_id=run_id, status__in=(AttachmentStatus.ACTIVE, AttachmentStatus.APPROVED)
    ).select_related("mechanism"):
        with contextlib.suppress(ReviewError):  # a concurrent kill switch got there first
            retire_with_run(attachment, at_iteration=None)
