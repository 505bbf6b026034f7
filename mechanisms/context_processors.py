"""What every page shows about Level 2: the pending-review count, and whether generated code can run here."""

from django.http import HttpRequest

from .models import AttachmentStatus, MechanismAttachment
from .sandbox import isolation_status


def review_queue(request: HttpRequest) -> dict[str, int]:
    if not request.user.is_authenticated:
        return {}
    return {"pending_review_count": MechanismAttachment.objects.filter(status=AttachmentStatus.PENDING).count()}


def level2_isolation(request: HttpRequest) -> dict[str, str]:
    """The reason Level 2 refuses generated code on this machine, or nothing when it can run it."""
    if not request.user.is_authenticated:
        return {}
    status = isolation_status()
    return {} if status.available else {"level2_unavailable_reason": status.reason}
