"""Looking after experiments and runs: archive (hide from the list, keep whole), delete (for good,
once nothing of it is queued or running), and a run's tags and notes. Allowed to whoever may
control the experiment's runs (its creator or staff); reference experiments may be archived or
deleted but their runs are not annotated."""

from __future__ import annotations

import re

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from ..engine.control import can_control
from ..models import Experiment, Run, RunStatus

MAX_TAGS = 10
MAX_TAG_CHARS = 40
MAX_NOTES_CHARS = 10_000


def _experiment_for(request: HttpRequest, experiment_id: int) -> Experiment:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    if not can_control(request.user, experiment):
        raise PermissionDenied("only the experiment's creator or staff may do this")
    return experiment


@require_POST
def experiment_archive(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = _experiment_for(request, experiment_id)
    experiment.archived_at = None if experiment.archived_at else timezone.now()
    experiment.save(update_fields=["archived_at"])
    messages.success(request, f"“{experiment.name}” is {'archived' if experiment.archived_at else 'back in the list'}.")
    return redirect("experiment_detail", experiment_id=experiment.pk)


@require_POST
def experiment_delete(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = _experiment_for(request, experiment_id)
    # Replays too: a worker stepping one would find its run gone mid-step.
    if Run.all_objects.filter(experiment=experiment, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
        messages.error(request, "Some runs (or replays of them) are queued or running: pause or cancel them first.")
        return redirect("experiment_detail", experiment_id=experiment.pk)
    if request.POST.get("confirm", "") != experiment.name:
        messages.error(request, "Type the experiment's name to confirm the deletion.")
        return redirect("experiment_detail", experiment_id=experiment.pk)
    name = experiment.name
    experiment.delete()
    messages.success(request, f"Deleted “{name}” with its runs and iterations.")
    return redirect("home")


def parse_tags(text: str) -> list[str]:
    tags = []
    for raw in re.split(r"[,\n]", text):
        tag = " ".join(raw.split())[:MAX_TAG_CHARS]
        if tag and tag not in tags:
            tags.append(tag)
    return tags[:MAX_TAGS]


@require_POST
def run_annotate(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("experiment"), pk=run_id)
    if run.experiment.is_reference or not can_control(request.user, run.experiment):
        raise PermissionDenied("only the experiment's creator or staff may annotate its runs")
    run.tags = parse_tags(request.POST.get("tags", "").replace("\x00", ""))
    run.notes = request.POST.get("notes", "").replace("\x00", "")[:MAX_NOTES_CHARS]
    Run.objects.filter(pk=run.pk).update(tags=run.tags, notes=run.notes)  # not save(): workers own the rest
    messages.success(request, "Tags and notes saved.")
    return redirect("run_detail", run_id=run.pk)
