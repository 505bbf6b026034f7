"""What every page shows about Level 2: the pending-review count, and whether generated code can run here."""

from django.http import HttpRequest

from .models import AttachmentStatus, MechanismAttachment
from .sandbox.host import isolation_status

# The status a run shows while it waits for a review decision (the engine's RunStatus value).
BLOCKED_RUN_STATUS = "awaiting_review"


def review_queue(request: HttpRequest) -> dict[str, int]:
    """The navigation badge counts only reviews that hold a run up right now."""
    if not request.user.is_authenticated:
        return {}
    blocking = MechanismAttachment.objects.filter(status=AttachmentStatus.PENDING, run__status=BLOCKED_RUN_STATUS)
    return {"pending_review_count": blocking.count()}


def level2_isolation(request: HttpRequest) -> dict[str, str]:
    """The reason Level 2 refuses generated code on this machine, or nothing when it can run it."""
    if not request.user.is_authenticated:
        return {}
    status = isolation_status()
    return {} if status.available else {"level2_unavailable_reason": status.reason}
