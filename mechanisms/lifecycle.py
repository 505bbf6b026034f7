"""Transitions of a mechanism attached to a run, each stored as a MechanismEvent (who, when, why).

validating → invalid | pending (review gate on) | approved (gate off)
pending → approved | rejected            (a person with mechanisms.review_mechanism)
approved → active                        (the engine, at the next iteration boundary)
active → deactivated                     (kill switch, or the runtime after a hook failed)
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.events import publish_run_event

from .models import AttachmentStatus, MechanismAttachment, MechanismEvent

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
    publish_run_event(
        attachment.run_id,
        {"type": "mechanism", "run": attachment.run_id, "attachment": attachment.pk,
         "name": attachment.mechanism.name, "status": to_status, "note": note},
    )
    return attachment


def _require_reviewer(user: Any) -> None:
    if not user.has_perm(REVIEW_PERMISSION):
        raise ReviewError("you do not have permission to review mechanisms")


def approve(attachment: MechanismAttachment, user: Any, comment: str = "") -> MechanismAttachment:
    _require_reviewer(user)
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
