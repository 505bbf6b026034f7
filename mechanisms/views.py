"""Mechanism review pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import AttachmentStatus, MechanismAttachment


def review_queue(request: HttpRequest) -> HttpResponse:
    pending = (
        MechanismAttachment.objects.filter(status=AttachmentStatus.PENDING)
        .select_related("mechanism", "run__experiment")
        .order_by("created_at")
    )
    return render(request, "mechanisms/review_queue.html", {"pending": pending})
