"""Dashboard pages for experiments and runs."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import Experiment, Run, RunStatus


def home(request: HttpRequest) -> HttpResponse:
    experiments = Experiment.objects.all()[:20]
    active_runs = Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).select_related("experiment")
    return render(request, "runs/home.html", {"experiments": experiments, "active_runs": active_runs})
