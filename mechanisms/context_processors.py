"""The pending-review count shown in the navigation on every page."""

from django.http import HttpRequest

from .models import AttachmentStatus, MechanismAttachment


def review_queue(request: HttpRequest) -> dict[str, int]:
    if not request.user.is_authenticated:
        return {}
    return {"pending_review_count": MechanismAttachment.objects.filter(status=AttachmentStatus.PENDING).count()}
