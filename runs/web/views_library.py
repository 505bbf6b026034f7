"""The library of validated mechanisms, and adding one to an experiment (its runs load it at their next step)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from mechanisms.models import AttachmentStatus, Mechanism
from mechanisms.views import can_review

from ..analysis.credit import FLAG_MIN_RUNS, credit_by_mechanism
from ..models import Experiment


@require_GET
def library(request: HttpRequest) -> HttpResponse:
    mechanisms = (
        Mechanism.objects.filter(passed_ladder=True)
        .annotate(
            runs_using=Count("attachments__run", distinct=True,
                             filter=Q(attachments__status__in=[AttachmentStatus.ACTIVE, AttachmentStatus.DEACTIVATED])),
            attachments_total=Count("attachments", distinct=True),
            experiments_count=Count("experiments", distinct=True),
        )
        .order_by("name", "-created_at")
    )
    credits = credit_by_mechanism()
    for mechanism in mechanisms:
        mechanism.credit = credits.get(mechanism.pk)  # type: ignore[attr-defined]
    experiments = Experiment.objects.filter(is_reference=False).order_by("-created_at")[:100]
    return render(request, "mechanisms/library.html", {
        "mechanisms": mechanisms, "experiments": experiments, "can_attach": can_review(request.user),
        "flag_min_runs": FLAG_MIN_RUNS,
    })


@require_POST
def library_attach(request: HttpRequest, mechanism_id: int) -> HttpResponse:
    """Add a validated mechanism to an experiment's library set (its runs load it at their next step)."""
    mechanism = get_object_or_404(Mechanism, pk=mechanism_id)
    if not can_review(request.user):
        return HttpResponse(
            "You do not have permission to attach mechanisms (mechanisms.review_mechanism); nothing was changed.",
            status=403, content_type="text/plain; charset=utf-8",
        )
    if not mechanism.passed_ladder:
        messages.error(request, f"{mechanism.name} has not passed the validation ladder; it cannot be attached.")
        return HttpResponseRedirect(reverse("mechanism_library"))
    raw = request.POST.get("experiment", "")
    experiment = Experiment.objects.filter(pk=int(raw)).first() if raw.isascii() and raw.isdigit() else None
    if experiment is None:
        messages.error(request, "Choose an experiment.")
    elif experiment.is_reference:
        messages.error(request, f"{experiment.name} is a reference experiment (read-only).")
    else:
        experiment.library_mechanisms.add(mechanism)
        messages.success(request, f"{mechanism.name} is now part of experiment {experiment.name}.")
    return HttpResponseRedirect(reverse("mechanism_library"))
