"""The JSON API under /api/: experiments, runs, iterations, outer cycles, mechanisms, comparison,
paper import. The route table at the bottom drives both the URLs (runs/api_urls.py) and the
OpenAPI 3 document at /api/openapi.json, so the two cannot drift apart.

Authentication is Django's session, for browsers and scripts alike:

    GET  /api/session/                      -> {"authenticated": false, "csrf_token": T}  (+ csrftoken cookie)
    POST /api/session/ {"username", "password"}   header X-CSRFToken: T, cookie csrftoken
                                            -> {"authenticated": true, "csrf_token": T2} (+ sessionid cookie)
    then every state change sends the cookies and X-CSRFToken: T2.  DELETE /api/session/ logs out.

Errors are JSON: {"error": message, ...}. 401 when not logged in (never a login redirect),
403 without permission or with a missing/wrong CSRF token, 400 for malformed input (nothing is
stored), 404, 405, 409 for a transition the object's state does not allow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from django import forms
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.views.decorators.csrf import csrf_exempt

from mechanisms import lifecycle
from mechanisms.models import AttachmentStatus, MechanismAttachment

from . import control
from .comparison import build_comparison
from .confirmation import confirmed_deltas
from .forms import ExperimentForm
from .models import Experiment, Group, Iteration, IterationKind, IterationStatus, Run, RunStatus
from .paper_import import DEFAULT_EXPERIMENT_NAME, PaperImportError, import_reports
from .serializers import iteration_to_dict, outer_cycle_to_dict, run_to_dict
from .stats import TESTS

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100
MAX_COMMENT_CHARS = 5_000
MAX_STRING_CHARS = 10_000
MAX_IMPORT_FILES = 20
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> Any:
        return reason


def csrf_failure_reason(request: HttpRequest) -> str | None:
    check = _CsrfCheck(lambda _request: HttpResponse())
    check.process_request(request)
    reason = check.process_view(request, lambda _request: HttpResponse(), (), {})
    return reason if isinstance(reason, str) else None


View = Callable[..., HttpResponse]


def endpoint(*methods: str, public: bool = False) -> Callable[[View], View]:
    """JSON errors, method check, 401 for anonymous callers, CSRF on state changes (answered in JSON)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error_response(405, f"method {request.method} not allowed; use {', '.join(methods)}")
                response["Allow"] = ", ".join(methods)
                return response
            if not public and not request.user.is_authenticated:
                return error_response(401, "authentication required: log in with POST /api/session/")
            if request.method not in SAFE_METHODS:
                reason = csrf_failure_reason(request)
                if reason:
                    return error_response(
                        403, f"CSRF check failed ({reason}): send the csrftoken cookie and the X-CSRFToken header "
                        "from GET /api/session/",
                    )
            try:
                return view(request, *args, **kwargs)
            except ApiError as failure:
                return error_response(failure.status, failure.message, **failure.extra)
            except Http404:
                return error_response(404, "not found")

        # CSRF is checked above (so the answer is JSON); the login redirect is replaced by a 401.
        return login_not_required(csrf_exempt(wrapper))

    return decorate


# --- input helpers -----------------------------------------------------------------------------


def json_body(request: HttpRequest) -> dict[str, Any]:
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ApiError(400, f"send a JSON body with Content-Type: application/json (got {content_type or 'none'})")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(400, "the request body is too large") from None
    try:
        data = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def optional_json_body(request: HttpRequest) -> dict[str, Any]:
    """For actions whose parameters are all optional: an empty or non-JSON body means none."""
    if request.content_type == "application/json" and request.body.strip():
        return json_body(request)
    return {}


def reject_unknown(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)[:300]}", allowed=sorted(allowed))


def string_field(data: dict[str, Any], name: str, *, required: bool = False, limit: int = MAX_STRING_CHARS) -> str:
    value = data.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    if len(value) > limit:
        raise ApiError(400, f"{name} is longer than {limit} characters")
    if "\x00" in value:  # PostgreSQL cannot store or compare NUL characters in text
        raise ApiError(400, f"{name} must not contain NUL characters")
    if required and not value.strip():
        raise ApiError(400, f"{name} is required")
    return value


def query_int(request: HttpRequest, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be between {low} and {high}")
    return value


def query_choice(request: HttpRequest, name: str, choices: list[str]) -> list[str]:
    values = [v for raw in request.GET.getlist(name) for v in raw.split(",") if v]
    bad = [v for v in values if v not in choices]
    if bad:
        raise ApiError(400, f"query parameter {name}: unknown value(s) {', '.join(bad)[:100]}", allowed=choices)
    return values


def paginate(
    request: HttpRequest, queryset: QuerySet[Any], serialize: Callable[[Any], dict[str, Any]]
) -> JsonResponse:
    page = query_int(request, "page", 1, 1, 10**9) or 1
    size = query_int(request, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    total = queryset.count()
    items = list(queryset[(page - 1) * size : page * size])
    return JsonResponse({
        "count": total, "page": page, "page_size": size, "pages": (total + size - 1) // size,
        "results": [serialize(item) for item in items],
    })


def get_or_404(queryset: QuerySet[Any], pk: int) -> Any:
    obj = queryset.filter(pk=pk).first()
    if obj is None:
        raise ApiError(404, f"{queryset.model._meta.verbose_name} {pk} not found")
    return obj


# --- serializers -------------------------------------------------------------------------------


def experiment_to_dict(experiment: Experiment, runs: list[Run] | None = None) -> dict[str, Any]:
    data = {
        "id": experiment.pk,
        "name": experiment.name,
        "description": experiment.description,
        "created_by": experiment.created_by.username if experiment.created_by else None,
        "created_at": experiment.created_at.isoformat(),
        "is_reference": experiment.is_reference,
        "groups": experiment.groups,
        "repeats": experiment.repeats,
        "iterations": experiment.iterations,
        "strategy_interval": experiment.strategy_interval,
        "research_interval": experiment.research_interval,
        "preset": experiment.preset,
        "objective": experiment.objective,
        "budget_kind": experiment.budget_kind,
        "budget_value": experiment.budget_value,
        "seed_base": experiment.seed_base,
        "threads": experiment.threads,
        "agent_backend": experiment.agent_backend,
        "llm_base_url": experiment.llm_base_url,
        "llm_model": experiment.llm_model,
        "llm_api_key_set": bool(experiment.llm_api_key),  # the key itself is never returned
        "acceptance_policy": experiment.acceptance_policy,
        "noise_k": experiment.noise_k,
        "baseline_repeats": experiment.baseline_repeats,
        "confirmation_repeats": experiment.confirmation_repeats,
        "review_gate": experiment.review_gate,
    }
    if runs is not None:
        data["runs"] = [run_to_dict(run) for run in runs]
    return data


def attachment_to_dict(attachment: MechanismAttachment, detail: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": attachment.pk,
        "run": attachment.run_id,
        "experiment": attachment.run.experiment_id,
        "name": attachment.mechanism.name,
        "code_hash": attachment.mechanism.code_hash,
        "origin": attachment.mechanism.origin,
        "status": attachment.status,
        "status_detail": attachment.status_detail,
        "ladder_ok": bool(attachment.ladder) and all(step.get("ok") for step in attachment.ladder),
        "decisions_changed": attachment.decisions_changed,
        "hook_calls": attachment.hook_calls,
        "activated_at_iteration": attachment.activated_at_iteration,
        "deactivated_at_iteration": attachment.deactivated_at_iteration,
        "reviewed_by": attachment.reviewed_by.username if attachment.reviewed_by else None,
        "reviewed_at": attachment.reviewed_at.isoformat() if attachment.reviewed_at else None,
        "review_comment": attachment.review_comment,
        "created_at": attachment.created_at.isoformat(),
        "review_url": f"/mechanisms/{attachment.pk}/",
    }
    if detail:
        session = attachment.session
        data.update({
            "code": attachment.mechanism.code,
            "spec": attachment.mechanism.spec,
            "ladder": attachment.ladder,
            "dry_run_report": attachment.dry_run_report,
            "session": None if session is None else {
                "id": session.pk, "outer_cycle_index": session.outer_cycle_index, "status": session.status,
                "backend": session.backend, "artifacts": session.artifacts, "repair_rounds": session.repair_rounds,
            },
            "events": [
                {"from": e.from_status, "to": e.to_status, "actor": e.actor.username if e.actor else None,
                 "note": e.note, "at_iteration": e.at_iteration, "created_at": e.created_at.isoformat()}
                for e in attachment.events.select_related("actor").order_by("created_at")
            ],
        })
    return data


# --- views -------------------------------------------------------------------------------------


@endpoint("GET", "POST", "DELETE", public=True)
def session(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        data = json_body(request)
        reject_unknown(data, {"username", "password"})
        username = string_field(data, "username", required=True, limit=150)
        password = string_field(data, "password", required=True, limit=1000)
        found = authenticate(request, username=username, password=password)
        if found is None:
            raise ApiError(401, "wrong username or password")
        login(request, found)
    elif request.method == "DELETE":
        logout(request)
    user = request.user
    return JsonResponse({
        "authenticated": user.is_authenticated,
        "username": user.get_username() if user.is_authenticated else None,
        "can_review_mechanisms": user.has_perm(lifecycle.REVIEW_PERMISSION),
        "csrf_token": get_token(request),
    })


@endpoint("GET", public=True)
def openapi(request: HttpRequest) -> HttpResponse:
    return JsonResponse(openapi_document(), json_dumps_params={"indent": 2})


@endpoint("GET")
def index(request: HttpRequest) -> HttpResponse:
    from mechanisms.sandbox import isolation_status

    level2 = isolation_status()
    return JsonResponse({"openapi": "/api/openapi.json", "routes": [f"/api/{r.path}" for r in ROUTES],
                         "level2_isolation": {"available": level2.available, "reason": level2.reason}})


EXPERIMENT_FIELDS = set(ExperimentForm.base_fields)


def _check_experiment_types(data: dict[str, Any]) -> None:
    """JSON types must match exactly (the form alone would accept "5" for 5)."""
    for name, value in data.items():
        form_field = ExperimentForm.base_fields[name]
        if isinstance(form_field, forms.MultipleChoiceField):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            expected = "a list of strings"
        elif isinstance(form_field, forms.BooleanField):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(form_field, forms.FloatField):  # before IntegerField: FloatField subclasses it
            ok, expected = isinstance(value, int | float) and not isinstance(value, bool), "a number"
            ok = ok and math.isfinite(value)
        elif isinstance(form_field, forms.IntegerField):
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        else:
            ok, expected = isinstance(value, str), "a string"
            if ok and len(value) > MAX_STRING_CHARS:
                raise ApiError(400, f"{name} is longer than {MAX_STRING_CHARS} characters")
        if not ok:
            raise ApiError(400, f"{name} must be {expected}")


@endpoint("GET", "POST")
def experiments(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        data = json_body(request)
        reject_unknown(data, EXPERIMENT_FIELDS)
        _check_experiment_types(data)
        form = ExperimentForm(data={k: v for k, v in data.items() if v is not None})
        if not form.is_valid():
            errors = {name: [str(m) for m in messages] for name, messages in form.errors.items()}
            raise ApiError(400, "the experiment is not valid; nothing was created", fields=errors)
        experiment = form.save_and_start(request.user)
        return JsonResponse(experiment_to_dict(experiment, list(experiment.runs.all())), status=201)
    queryset = Experiment.objects.select_related("created_by").order_by("-created_at")
    reference = request.GET.get("reference")
    if reference is not None:
        if reference not in ("true", "false"):
            raise ApiError(400, "query parameter reference must be true or false")
        queryset = queryset.filter(is_reference=reference == "true")
    return paginate(request, queryset, experiment_to_dict)


@endpoint("GET")
def experiment_detail(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_or_404(Experiment.objects.select_related("created_by"), experiment_id)
    return JsonResponse(experiment_to_dict(experiment, list(experiment.runs.order_by("group", "repeat"))))


@endpoint("GET")
def experiment_comparison(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_or_404(Experiment.objects.all(), experiment_id)
    budget = query_int(request, "budget", None, 0, 100_000)
    other_ids = []
    for raw in request.GET.getlist("with"):
        if not (raw.isascii() and raw.isdigit()) or int(raw) > 2**62:  # "²".isdigit() is True; int("²") fails
            raise ApiError(400, "query parameter with must be experiment ids")
        other_ids.append(int(raw))
    if len(other_ids) > 5:
        raise ApiError(400, "compare with at most 5 other experiments")
    others = list(Experiment.objects.filter(pk__in=other_ids))
    missing = sorted(set(other_ids) - {e.pk for e in others})
    if missing:
        raise ApiError(404, f"experiment(s) {', '.join(map(str, missing))} not found")
    test = request.GET.get("test", "permutation")
    if test not in TESTS:
        raise ApiError(400, f"query parameter test must be one of {', '.join(TESTS)}")
    return JsonResponse(build_comparison(experiment, others, budget=budget, test=test))


@endpoint("GET")
def runs(request: HttpRequest) -> HttpResponse:
    queryset = Run.objects.order_by("experiment_id", "group", "repeat")
    experiment = query_int(request, "experiment", None, 1, 2**62)
    if experiment is not None:
        queryset = queryset.filter(experiment_id=experiment)
    groups = query_choice(request, "group", list(Group.values))
    if groups:
        queryset = queryset.filter(group__in=groups)
    statuses = query_choice(request, "status", list(RunStatus.values))
    if statuses:
        queryset = queryset.filter(status__in=statuses)
    return paginate(request, queryset, run_to_dict)


@endpoint("GET")
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_or_404(Run.objects.select_related("experiment"), run_id)
    data = run_to_dict(run)
    data["iterations_url"] = f"/api/iterations/?run={run.pk}"
    data["outer_cycles"] = [outer_cycle_to_dict(c) for c in run.outer_cycles.order_by("index")]
    confirmed = confirmed_deltas([run])[run.pk]
    data["confirmed"] = confirmed.as_dict() if confirmed else None  # None until every confirmation is trained
    data["mechanisms"] = [attachment_to_dict(a) for a in
                          run.mechanism_attachments.select_related("mechanism", "run", "reviewed_by")]
    return JsonResponse(data)


RUN_ACTIONS: dict[str, Callable[[Run], None]] = {
    "pause": control.pause_run, "resume": control.resume_run, "cancel": control.cancel_run,
}


def _may_control(user: Any, experiment: Experiment) -> bool:
    from .views import can_control  # the dashboard's rule, shared so the API grants exactly the same

    return can_control(user, experiment)


@endpoint("POST")
def run_action(request: HttpRequest, run_id: int, action: str) -> HttpResponse:
    run = get_or_404(Run.objects.select_related("experiment"), run_id)
    reject_unknown(optional_json_body(request), set())
    if run.experiment.is_reference:
        raise ApiError(403, "reference experiments are read-only")
    if not _may_control(request.user, run.experiment):
        raise ApiError(403, "only the experiment's creator or staff may control its runs")
    try:
        RUN_ACTIONS[action](run)
    except control.TransitionError as refused:
        raise ApiError(409, str(refused)) from None
    run.refresh_from_db()
    return JsonResponse(run_to_dict(run))


@endpoint("GET")
def iterations(request: HttpRequest) -> HttpResponse:
    queryset = Iteration.objects.order_by("run_id", "index")
    run = query_int(request, "run", None, 1, 2**62)
    experiment = query_int(request, "experiment", None, 1, 2**62)
    if run is not None:
        queryset = queryset.filter(run_id=run)
    if experiment is not None:
        queryset = queryset.filter(run__experiment_id=experiment)
    statuses = query_choice(request, "status", list(IterationStatus.values))
    if statuses:
        queryset = queryset.filter(status__in=statuses)
    kinds = query_choice(request, "kind", list(IterationKind.values))
    if kinds:
        queryset = queryset.filter(kind__in=kinds)
    groups = query_choice(request, "group", list(Group.values))
    if groups:
        queryset = queryset.filter(run__group__in=groups)
    since = query_int(request, "min_index", None, 0, 10**9)
    if since is not None:
        queryset = queryset.filter(index__gte=since)
    return paginate(request, queryset, iteration_to_dict)


@endpoint("GET")
def outer_cycles(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_or_404(Run.objects.all(), run_id)
    cycles = [outer_cycle_to_dict(c) for c in run.outer_cycles.order_by("index")]
    return JsonResponse({"run": run.pk, "results": cycles})


@endpoint("GET")
def mechanisms(request: HttpRequest) -> HttpResponse:
    queryset = MechanismAttachment.objects.select_related("mechanism", "run", "reviewed_by").order_by("-created_at")
    statuses = query_choice(request, "status", list(AttachmentStatus.values))
    if statuses:
        queryset = queryset.filter(status__in=statuses)
    run = query_int(request, "run", None, 1, 2**62)
    if run is not None:
        queryset = queryset.filter(run_id=run)
    experiment = query_int(request, "experiment", None, 1, 2**62)
    if experiment is not None:
        queryset = queryset.filter(run__experiment_id=experiment)
    return paginate(request, queryset, attachment_to_dict)


def _attachment(attachment_id: int) -> MechanismAttachment:
    return get_or_404(
        MechanismAttachment.objects.select_related("mechanism", "run__experiment", "session", "reviewed_by"),
        attachment_id,
    )


@endpoint("GET")
def mechanism_detail(request: HttpRequest, attachment_id: int) -> HttpResponse:
    return JsonResponse(attachment_to_dict(_attachment(attachment_id), detail=True))


@endpoint("POST")
def mechanism_action(request: HttpRequest, attachment_id: int, action: str) -> HttpResponse:
    attachment = _attachment(attachment_id)
    data = optional_json_body(request)
    reject_unknown(data, {"comment"})
    comment = string_field(data, "comment", limit=MAX_COMMENT_CHARS).strip()
    if attachment.run.experiment.is_reference:
        raise ApiError(403, "reference experiments are read-only")
    if not request.user.has_perm(lifecycle.REVIEW_PERMISSION):
        raise ApiError(403, "you do not have permission to review mechanisms (mechanisms.review_mechanism)")
    if action == "reject" and not comment:
        raise ApiError(400, "a rejection needs a comment saying why")
    try:
        if action == "approve":
            lifecycle.approve(attachment, request.user, comment)
        elif action == "reject":
            lifecycle.reject(attachment, request.user, comment)
        else:
            lifecycle.kill(attachment, request.user, comment)
    except lifecycle.ReviewError as refused:
        raise ApiError(409, str(refused)) from None
    return JsonResponse(attachment_to_dict(_attachment(attachment_id), detail=True))


@endpoint("POST")
def paper_import(request: HttpRequest) -> HttpResponse:
    data = json_body(request)
    reject_unknown(data, {"experiment_name", "files"})
    name = string_field(data, "experiment_name", limit=200) or DEFAULT_EXPERIMENT_NAME
    files = data.get("files")
    if not isinstance(files, list) or not files:
        raise ApiError(400, "files must be a non-empty list of {name, content}")
    if len(files) > MAX_IMPORT_FILES:
        raise ApiError(400, f"at most {MAX_IMPORT_FILES} files at once")
    contents: list[tuple[str, bytes | str]] = []
    for position, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise ApiError(400, f"files[{position}] must be an object with name and content")
        reject_unknown(entry, {"name", "content"})
        file_name = string_field(entry, "name", required=True, limit=200)
        content = entry.get("content")
        if isinstance(content, dict):
            contents.append((file_name, json.dumps(content)))
        elif isinstance(content, str):
            contents.append((file_name, content))
        else:
            raise ApiError(400, f"files[{position}].content must be the report object or its JSON text")
    try:
        experiment, created = import_reports(contents, name, request.user)
    except PaperImportError as failure:
        raise ApiError(400, f"nothing was imported: {failure}") from None
    return JsonResponse({"experiment": experiment_to_dict(experiment), "runs": [run_to_dict(r) for r in created]},
                        status=201)


# --- route table and OpenAPI -------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    summary: str
    query: tuple[tuple[str, str, str], ...] = ()  # (name, type, description)
    body: dict[str, Any] | None = None
    success: int = 200


@dataclass(frozen=True)
class Route:
    path: str  # Django path syntax, relative to /api/
    view: View
    name: str
    operations: dict[str, Operation]
    kwargs: dict[str, Any] = field(default_factory=dict)


PAGE = (("page", "integer", "page number, from 1"), ("page_size", "integer", f"1–{MAX_PAGE_SIZE}"))
COMMENT_BODY = {"type": "object", "additionalProperties": False,
                "properties": {"comment": {"type": "string", "maxLength": MAX_COMMENT_CHARS}}}


def _choice_values(form_field: Any) -> list[str]:
    return [str(value) for value, _label in form_field.choices if value != ""]


def _experiment_body() -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, form_field in ExperimentForm.base_fields.items():
        if isinstance(form_field, forms.MultipleChoiceField):
            properties[name] = {"type": "array", "items": {"type": "string", "enum": _choice_values(form_field)}}
        elif isinstance(form_field, forms.BooleanField):
            properties[name] = {"type": "boolean"}
        elif isinstance(form_field, forms.FloatField):
            properties[name] = {"type": "number"}
        elif isinstance(form_field, forms.IntegerField):
            properties[name] = {"type": "integer"}
        elif isinstance(form_field, forms.ChoiceField):
            properties[name] = {"type": "string", "enum": _choice_values(form_field)}
        else:
            properties[name] = {"type": "string"}
        if form_field.help_text:
            properties[name]["description"] = str(form_field.help_text)
    return {"type": "object", "additionalProperties": False, "required": ["name", "groups"],
            "properties": properties}


ROUTES: list[Route] = [
    Route("", index, "api_index", {"get": Operation("List the API's routes")}),
    Route("openapi.json", openapi, "api_openapi", {"get": Operation("This OpenAPI 3 document (no login needed)")}),
    Route("session/", session, "api_session", {
        "get": Operation("Who is logged in, and a CSRF token (sets the csrftoken cookie)"),
        "post": Operation("Log in; returns a fresh CSRF token for later state changes", body={
            "type": "object", "additionalProperties": False, "required": ["username", "password"],
            "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}),
        "delete": Operation("Log out"),
    }),
    Route("experiments/", experiments, "api_experiments", {
        "get": Operation("List experiments", query=(*PAGE, ("reference", "string", "true or false"))),
        "post": Operation("Create an experiment, its runs, and start them", body={}, success=201),
    }),
    Route("experiments/<int:experiment_id>/", experiment_detail, "api_experiment",
          {"get": Operation("An experiment with its runs")}),
    Route("experiments/<int:experiment_id>/comparison/", experiment_comparison, "api_experiment_comparison", {
        "get": Operation("Comparison data (running best per group, summary, permutation and Welch tests with Holm's "
                         "correction, effect sizes, parameters, LLM usage)",
                         query=(("budget", "integer", "proposals; default the experiment's T"),
                                ("with", "integer", "another experiment id; repeatable (max 5)"),
                                ("test", "string", "permutation (default) or welch: which test highlights a pair"))),
    }),
    Route("runs/", runs, "api_runs", {"get": Operation("List runs", query=(
        *PAGE, ("experiment", "integer", "experiment id"), ("group", "string", "A,B,C,D,R (comma-separated)"),
        ("status", "string", "run statuses (comma-separated)")))}),
    Route("runs/<int:run_id>/", run_detail, "api_run",
          {"get": Operation("A run with its outer cycles and mechanisms")}),
    *[Route(f"runs/<int:run_id>/{action}/", run_action, f"api_run_{action}",
            {"post": Operation(f"{action.capitalize()} the run (creator or staff; 409 if its state forbids it)")},
            {"action": action}) for action in RUN_ACTIONS],
    Route("runs/<int:run_id>/outer-cycles/", outer_cycles, "api_run_outer_cycles",
          {"get": Operation("The run's Level 1.5 outer cycles")}),
    Route("iterations/", iterations, "api_iterations", {"get": Operation("Iterations, filtered and paginated", query=(
        *PAGE, ("run", "integer", "run id"), ("experiment", "integer", "experiment id"),
        ("status", "string", "baseline, keep, discard, crash, invalid_proposal (comma-separated)"),
        ("kind", "string", "baseline, baseline_repeat, proposal, reevaluation (comma-separated)"),
        ("group", "string", "run groups (comma-separated)"), ("min_index", "integer", "only index ≥ this")))}),
    Route("mechanisms/", mechanisms, "api_mechanisms", {"get": Operation("Mechanism attachments", query=(
        *PAGE, ("status", "string", "attachment statuses (comma-separated)"), ("run", "integer", "run id"),
        ("experiment", "integer", "experiment id")))}),
    Route("mechanisms/<int:attachment_id>/", mechanism_detail, "api_mechanism",
          {"get": Operation("An attachment with code, spec, session artifacts, ladder, dry run and events")}),
    *[Route(f"mechanisms/<int:attachment_id>/{action}/", mechanism_action, f"api_mechanism_{action}",
            {"post": Operation(f"{action.capitalize()} (needs mechanisms.review_mechanism"
                               f"{'; comment required' if action == 'reject' else ''})", body=COMMENT_BODY)},
            {"action": action}) for action in ("approve", "reject", "kill")],
    Route("paper-import/", paper_import, "api_paper_import", {"post": Operation(
        "Import published paper reports into a reference experiment (all or nothing)", success=201, body={
            "type": "object", "additionalProperties": False, "required": ["files"],
            "properties": {"experiment_name": {"type": "string", "maxLength": 200},
                           "files": {"type": "array", "maxItems": MAX_IMPORT_FILES, "items": {
                               "type": "object", "additionalProperties": False, "required": ["name", "content"],
                               "properties": {"name": {"type": "string"},
                                              "content": {"description": "the report object, or its JSON text"}}}}}})}),
]


def _openapi_path(path: str) -> tuple[str, list[str]]:
    params = []
    parts = []
    for part in path.split("/"):
        if part.startswith("<int:") and part.endswith(">"):
            name = part[5:-1]
            params.append(name)
            parts.append("{" + name + "}")
        else:
            parts.append(part)
    return "/api/" + "/".join(parts), params


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        url, path_params = _openapi_path(route.path)
        item: dict[str, Any] = {}
        for method, op in route.operations.items():
            parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "integer"}}
                          for p in path_params]
            parameters += [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
                           for n, t, d in op.query]
            responses: dict[str, Any] = {
                str(op.success): {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            }
            for code, text in (("400", "malformed input; nothing stored"), ("401", "not logged in"),
                               ("403", "no permission, or CSRF check failed"), ("404", "not found")):
                responses[code] = {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            if method == "post" and "action" in route.kwargs:
                responses["409"] = {"description": "the object's state does not allow this",
                                    "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            operation: dict[str, Any] = {"summary": op.summary, "operationId": f"{route.name}_{method}",
                                         "parameters": parameters, "responses": responses}
            if route.name in ("api_openapi",) or (route.name == "api_session" and method != "delete"):
                operation["security"] = []
            if op.body is not None:
                schema = _experiment_body() if route.name == "api_experiments" else op.body
                operation["requestBody"] = {"required": method != "post" or bool(schema.get("required")),
                                            "content": {"application/json": {"schema": schema}}}
            item[method] = operation
        paths[url] = item
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "bilevel API",
            "version": "1",
            "description": (
                "Session authentication: GET /api/session/ for a CSRF token (and the csrftoken cookie), POST "
                "/api/session/ {username, password} with header X-CSRFToken, keep the cookies, and send "
                "X-CSRFToken (the token the login returned) with every POST/DELETE. Errors are JSON {error}."
            ),
        },
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRFToken"},
            },
        },
        "security": [{"session": [], "csrf": []}],
        "paths": paths,
    }


def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return error_response(404, f"no API route /api/{rest}; see /api/openapi.json")


api_not_found = login_not_required(csrf_exempt(not_found))
