"""Dashboard pages for experiments and runs: list, create form, live run page, iteration tables."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from celery import current_app
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db.models import Count, Min, Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from mechanisms.models import MechanismAttachment

from ..analysis.confirmed import confirmed_deltas, real_deltas
from ..analysis.iteration_table import EXPORT_FORMATS, export_chunks, filtered_iterations, iterate_rows
from ..analysis.parallel_coordinates import measured_iterations, parallel_coordinates
from ..analysis.slice_plots import slice_plots
from ..engine import control, replay
from ..engine.devices import why_no_worker_can_take
from ..engine.experiment_form import ExperimentForm
from ..engine.level2_progress import latest_panel
from ..mechanism_spans import live_replays_of, mechanism_spans, removal_sets
from ..models import AgentBackend, Experiment, Group, Iteration, Run, RunKind, RunStatus
from ..serializers import iteration_to_dict, outer_cycle_to_dict, run_to_dict
from .credit_views import credit_context
from .forms import DEFAULT_PER_PAGE, IterationFilterForm, form_page_context

TABLE_TARGET = "iteration-table"
EXPERIMENTS_PER_PAGE = 25


# --- helpers -------------------------------------------------------------------------------


def json_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For JSON endpoints: anonymous callers get a 403 JSON error instead of a login redirect."""

    @login_not_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "authentication required"}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


def htmx_target(request: HttpRequest) -> str | None:
    """The id of the element an htmx request will swap (HtmxMiddleware), or None."""
    details = getattr(request, "htmx", None)
    return details.target if details else None


def agent_label(experiment: Experiment) -> str:
    if experiment.agent_backend == AgentBackend.LLM:
        model = experiment.llm_model or settings.LLM_MODEL or "?"
        return f"LLM: {model} at {experiment.llm_base_url or settings.LLM_BASE_URL or '?'}"
    return AgentBackend.BUILTIN.label


def policy_label(experiment: Experiment) -> str:
    if experiment.acceptance_policy == "noise_aware":
        return f"noise-aware (k={experiment.noise_k:g}, r={experiment.baseline_repeats})"
    return "strict (paper): keep iff val_bpb < best"


def attachment_to_dict(attachment: MechanismAttachment) -> dict[str, Any]:
    calls = attachment.hook_calls or {}
    return {
        "id": attachment.pk,
        "name": attachment.mechanism.name,
        "origin": attachment.mechanism.origin,
        "status": attachment.status,
        "status_display": attachment.get_status_display(),
        "status_detail": attachment.status_detail,
        "hook_calls": calls,
        "total_calls": sum(v for v in calls.values() if isinstance(v, int | float)),
        "decisions_changed": attachment.decisions_changed,
        "inert": attachment.status == "active" and attachment.decisions_changed == 0,
        "activated_at_iteration": attachment.activated_at_iteration,
        "deactivated_at_iteration": attachment.deactivated_at_iteration,
        "review_url": reverse("mechanism_review", args=[attachment.pk]),
    }


def run_snapshot(run: Run) -> dict[str, Any]:
    """Everything the live page draws, from the database (what a reconnecting client catches up to)."""
    experiment = run.experiment
    summary = run_to_dict(run)
    summary.update(
        iterations_planned=experiment.iterations,
        status_display=run.get_status_display(),
        is_finished=run.is_finished,
    )
    return {
        "run": summary,
        "iterations": [iteration_to_dict(i) for i in run.iteration_set.order_by("index")],
        "outer_cycles": [outer_cycle_to_dict(c) for c in run.outer_cycles.order_by("index")],
        "attachments": [
            attachment_to_dict(a) for a in run.mechanism_attachments.select_related("mechanism").order_by("created_at")
        ],
        "research_sessions": [
            {
                "id": session.pk,
                "outer_cycle_index": session.outer_cycle_index,
                "status": session.status,
                "status_display": session.get_status_display(),
                "status_detail": session.status_detail,
                "backend": session.backend,
                "backend_label": AgentBackend(session.backend).label if session.backend in AgentBackend.values
                else session.backend,
                "repair_rounds": session.repair_rounds,
                "picked": ", ".join(a.mechanism.name for a in session.attachments.all()),
                "rounds": session_rounds(session.artifacts),
            }
            for session in run.research_sessions.prefetch_related("attachments__mechanism")
            .order_by("outer_cycle_index")
        ],
        "live_progress": run.live_progress or {},
        "level2_panel": latest_panel(run.pk) if run.level_research else None,
        "last_curve": _last_curve(run),
        "interrupted_attempts": [
            {
                "iteration": attempt.index,
                "host": attempt.host,
                "pid": attempt.pid,
                "steps_done": attempt.steps_done,
                "reason": attempt.reason,
                "taken_over_at": attempt.taken_over_at.isoformat(),
            }
            for attempt in run.interrupted_attempts.all()
        ],
    }


ROUND_REPLY_CHARS = 1500


def session_rounds(artifacts: Any) -> list[dict[str, Any]]:
    """Each round of a Level 2 session as the run page shows it: what came back and why it was refused.

    Prompts stay out (they are rebuilt from the run, and would make every snapshot large); replies are cut.
    """
    rounds = artifacts.get("rounds") if isinstance(artifacts, dict) else None
    shown = []
    for entry in rounds if isinstance(rounds, list) else []:
        if not isinstance(entry, dict):
            continue
        reply = str(entry.get("reply") or "")
        shown.append({
            "round": str(entry.get("round", "")),
            "attempt": entry.get("attempt", 0),
            "error": str(entry.get("error") or ""),
            "reply": reply[:ROUND_REPLY_CHARS] + (" ..." if len(reply) > ROUND_REPLY_CHARS else ""),
            "seconds": entry.get("seconds"),
        })
    return shown


def _last_curve(run: Run) -> dict[str, Any]:
    """The most recent recorded training curve, shown while nothing is training."""
    last = run.iteration_set.exclude(curve=[]).order_by("-index").only("index", "curve").first()
    return {"iteration": last.index, "points": last.curve} if last else {}


def _table_context(request: HttpRequest, base: QuerySet[Iteration], *, experiment_view: bool) -> dict[str, Any]:
    data = request.GET.copy()
    data.setdefault("per_page", str(DEFAULT_PER_PAGE))  # so the select shows what the page uses
    form = IterationFilterForm(data)
    filters = form.cleaned_data if form.is_valid() else {}
    rows = filtered_iterations(base, filters)
    paginator = Paginator(rows, filters.get("per_page") or DEFAULT_PER_PAGE)
    page = paginator.get_page(filters.get("page") or 1)
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("format", None)
    return {
        "filter_form": form,
        "page_obj": page,
        "experiment_view": experiment_view,
        "table_url": request.path,
        "export_query": query.urlencode(),
        "sort": filters.get("sort") or "index",
        "total": paginator.count,
        "rows": rows,
    }


def _stream(chunks: Iterator[str], request: HttpRequest) -> StreamingHttpResponse:
    """Stream sync-produced chunks; under ASGI, pull them in a worker thread so nothing is buffered."""
    if not isinstance(request, ASGIRequest):
        return StreamingHttpResponse(chunks)

    def next_block() -> str:
        block = []
        for piece in chunks:
            block.append(piece)
            if len(block) >= 200:
                break
        return "".join(block)

    async def stream() -> AsyncIterator[str]:
        while block := await sync_to_async(next_block, thread_sensitive=True)():
            yield block

    return StreamingHttpResponse(stream())


def _export(request: HttpRequest, base: QuerySet[Iteration], filename: str) -> HttpResponseBase:
    fmt = request.GET.get("format", "")
    form = IterationFilterForm(request.GET)
    if fmt not in EXPORT_FORMATS:
        return HttpResponseBadRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    if not form.is_valid():
        return HttpResponseBadRequest("invalid filter: " + form.errors.as_text())
    rows = filtered_iterations(base, form.cleaned_data)
    response = _stream(export_chunks(iterate_rows(rows), fmt), request)
    response["Content-Type"] = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    response["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response


def _render_table(request: HttpRequest, template: str, context: dict[str, Any]) -> HttpResponse:
    if htmx_target(request) == TABLE_TARGET:
        return render(request, "runs/_iteration_table.html", context)
    return render(request, template, context)


# --- experiments ---------------------------------------------------------------------------


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    searches = Q(runs__kind=RunKind.SEARCH)  # a join ignores the default manager: replays are left out here
    status_counts = {
        f"n_{status}": Count("runs", filter=searches & Q(runs__status=status)) for status in RunStatus.values
    }
    show_archived = request.GET.get("archived") == "1"
    experiments = Experiment.objects.filter(archived_at__isnull=not show_archived).annotate(
        n_runs=Count("runs", filter=searches), best=Min("runs__best_val_bpb", filter=searches), **status_counts
    ).order_by("-created_at")
    page = Paginator(experiments, EXPERIMENTS_PER_PAGE).get_page(request.GET.get("page"))
    for experiment in page:
        experiment.agent_text = agent_label(experiment)  # type: ignore[attr-defined]
        experiment.status_counts = [  # type: ignore[attr-defined]
            (status, label, getattr(experiment, f"n_{status}"))
            for status, label in RunStatus.choices
            if getattr(experiment, f"n_{status}")
        ]
    active_runs = (
        Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        .select_related("experiment")
        .order_by("experiment_id", "group", "repeat")[:50]
    )
    return render(request, "runs/home.html",
                  {"page_obj": page, "active_runs": active_runs, "show_archived": show_archived})


@require_http_methods(["GET", "POST"])
def experiment_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ExperimentForm(request.POST)
        if form.is_valid():
            experiment = form.save_and_start(request.user)
            count = experiment.runs.count()
            messages.success(
                request, f"Created “{experiment.name}” with {count} run{pluralize(count)}; queued."
            )
            return redirect("experiment_detail", experiment_id=experiment.pk)
    else:
        form = ExperimentForm()
    return render(request, "runs/experiment_form.html", form_page_context(form))


def _experiment_runs(experiment: Experiment) -> list[Run]:
    runs = list(experiment.runs.order_by("group", "repeat"))
    for run in runs:
        run.delta = (  # type: ignore[attr-defined]
            None
            if run.best_val_bpb is None or run.baseline_val_bpb is None
            else run.best_val_bpb - run.baseline_val_bpb
        )
        run.progress_percent = (  # type: ignore[attr-defined]
            min(100, round(100 * run.proposals_done / experiment.iterations)) if experiment.iterations else 0
        )
    return runs


@require_GET
def experiment_detail(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    runs = _experiment_runs(experiment)
    context = {
        "experiment": experiment,
        "runs": runs,
        "agent_text": agent_label(experiment),
        "policy_text": policy_label(experiment),
        "any_active": any(not run.is_finished and run.status != RunStatus.PAUSED for run in runs),
        "can_manage": control.can_control(request.user, experiment),
    }
    if htmx_target(request) == "experiment-runs":
        # 286 tells htmx to stop polling once no run can change any more.
        return render(request, "runs/_experiment_runs.html", context, status=200 if context["any_active"] else 286)
    return render(request, "runs/experiment_detail.html", context)


@require_GET
def experiment_iterations(request: HttpRequest, experiment_id: int) -> HttpResponseBase:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    base = Iteration.objects.filter(run__experiment=experiment, run__kind=RunKind.SEARCH)
    if "format" in request.GET:
        return _export(request, base, f"experiment-{experiment.pk}-iterations")
    context = _table_context(request, base, experiment_view=True)
    context["experiment"] = experiment
    measured = measured_iterations(context["rows"])
    context["parcoords"] = parallel_coordinates(measured)
    context["slices"] = slice_plots(measured, experiment.groups)
    # Only the experiment's own groups, labelled with what each group is.
    context["filter_form"].fields["group"].choices = [(g, Group(g).label) for g in experiment.groups]
    return _render_table(request, "runs/experiment_iterations.html", context)


# --- runs ----------------------------------------------------------------------------------


def _run_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    experiment = run.experiment
    return {
        "run": run,
        "experiment": experiment,
        "agent_text": agent_label(experiment),
        "policy_text": policy_label(experiment),
        "can_control": control.can_control(request.user, experiment),
    }


@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run.all_objects.select_related("experiment"), pk=run_id)
    context = _run_context(request, run)
    context.update(_table_context(request, run.iteration_set.all(), experiment_view=False))
    context["table_url"] = reverse("run_iterations", args=[run.pk])
    context["snapshot"] = run_snapshot(run)
    context["pending_reviews"] = run.mechanism_attachments.filter(status="pending").select_related("mechanism")
    context["confirmed"] = confirmed_deltas([run])[run.pk]
    context.update(credit_context(run))
    context["no_worker"] = why_no_worker_can_take(run)
    context["real_confirmed"] = real_deltas([run])[run.pk]
    context["page_config"] = {
        "run": run.pk,
        "snapshotUrl": reverse("run_snapshot", args=[run.pk]),
        "tableUrl": reverse("run_iterations", args=[run.pk]),
        "socketPath": f"/ws/runs/{run.pk}/",
        "objective": run.experiment.objective,
    }
    return render(request, "runs/run_detail.html", context)


@json_login_required
@require_GET
def run_snapshot_json(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run.all_objects.select_related("experiment"), pk=run_id)
    return JsonResponse(run_snapshot(run))


@require_GET
def run_iterations(request: HttpRequest, run_id: int) -> HttpResponseBase:
    run = get_object_or_404(Run.all_objects.select_related("experiment"), pk=run_id)
    base = run.iteration_set.all()
    if "format" in request.GET:
        return _export(request, base, f"run-{run.pk}-iterations")
    context = _table_context(request, base, experiment_view=False)
    measured = measured_iterations(context["rows"])
    context.update(run=run, experiment=run.experiment, parcoords=parallel_coordinates(measured),
                   slices=slice_plots(measured, [run.group]))
    return _render_table(request, "runs/run_iterations.html", context)


@require_POST
def run_replays_offer(request: HttpRequest, run_id: int) -> HttpResponse:
    """Queue the missing paired replays of a finished run: a task makes them, this view trains nothing."""
    run = get_object_or_404(Run.objects.select_related("experiment"), pk=run_id)
    if not control.can_control(request.user, run.experiment):
        return HttpResponseForbidden("Only the experiment's creator or staff may start replays of its runs.")
    spans = mechanism_spans(run)
    if run.status != RunStatus.COMPLETED or not spans:
        messages.error(request, "Only a completed run in which a mechanism was active can be replayed.")
    elif len(live_replays_of(run)) >= len(removal_sets(spans)):
        messages.info(request, "Every replay of this run exists already.")
    else:
        current_app.send_task(replay.OFFER_TASK, args=[run.pk])
        messages.success(request, f"Replays of run {run.pk} queued; they appear below as they finish.")
    return redirect("run_detail", run_id=run.pk)


RUN_ACTIONS: dict[str, Callable[[Run], None]] = {
    "pause": control.pause_run,
    "resume": control.resume_run,
    "cancel": control.cancel_run,
}


@require_POST
def run_action(request: HttpRequest, run_id: int, action: str) -> HttpResponse:
    run = get_object_or_404(Run.all_objects.select_related("experiment"), pk=run_id)
    if action not in RUN_ACTIONS:
        return HttpResponseBadRequest(f"unknown action {action!r}")
    if not control.can_control(request.user, run.experiment):
        return HttpResponseForbidden("Only the experiment's creator or staff may control its runs.")
    error = ""
    try:
        RUN_ACTIONS[action](run)
    except control.TransitionError as refused:
        error = str(refused)
    run.refresh_from_db()
    if getattr(request, "htmx", False):  # HtmxMiddleware: a falsy object when not an htmx request
        context = _run_context(request, run)
        context["control_error"] = error
        context["control_done"] = "" if error else f"{action} done"
        return render(request, "runs/_run_controls.html", context)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Run {run.pk}: {action} done.")
    return redirect("run_detail", run_id=run.pk)
