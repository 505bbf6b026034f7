"""The JSON API under /api/ (django-ninja): experiments, runs, iterations, outer cycles, mechanisms,
comparison, paper import. Validation, the OpenAPI document (/api/openapi.json) and the interactive
docs (/api/docs, Swagger UI served from the django-ninja package, no CDN) all come from the
declarations below and in runs/api/schemas.py.

Authentication, either of:
- a session, for browsers and scripts: GET /api/session/ -> {"csrf_token": T} (+ csrftoken cookie);
  POST /api/session/ {"username", "password"} with header X-CSRFToken: T; then every state change
  sends the cookies and X-CSRFToken (the token the login returned). DELETE /api/session/ logs out.
- a per-user token (created and revoked on /settings/tokens/): header Authorization: Bearer <token>.
  No CSRF token is needed: a browser never sends this header on its own.

Errors are JSON {"error": message}: 401 when not authenticated (never a login redirect), 403 without
permission or with a missing/wrong CSRF token, 400 for malformed input (nothing is stored), 404,
405, 409 for a transition the object's state does not allow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from celery import current_app
from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.core.exceptions import RequestDataTooBig
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from ninja import NinjaAPI, Query, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from ninja.security.apikey import APIKeyCookie
from ninja.utils import check_csrf

from mechanisms import lifecycle
from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment

from ..analysis.comparison import build_comparison
from ..analysis.confirmed import confirmed_deltas, real_deltas
from ..analysis.credit import FLAG_MIN_RUNS, credit_by_mechanism, run_credits
from ..analysis.paper_import import DEFAULT_EXPERIMENT_NAME, PaperImportError, import_reports
from ..engine import control, replay
from ..engine.experiment_form import ExperimentForm
from ..mechanism_spans import mechanism_spans
from ..models import Experiment, Group, Iteration, IterationKind, IterationStatus, Run, RunKind, RunStatus
from ..serializers import iteration_to_dict, outer_cycle_to_dict, run_to_dict
from ..tokens import user_for_token
from .schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    AttachmentDetailOut,
    AttachmentPage,
    CommentIn,
    ErrorOut,
    ExperimentDetailOut,
    ExperimentIn,
    ExperimentPage,
    IndexOut,
    IterationPage,
    LoginIn,
    NoFieldsIn,
    OuterCyclesOut,
    PaperImportIn,
    PaperImportOut,
    RejectIn,
    RunDetailOut,
    RunOut,
    RunPage,
    SessionOut,
)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_ID = 2**62
CSRF_MESSAGE = ("CSRF check failed: send the csrftoken cookie and the X-CSRFToken header from GET /api/session/, "
                "or authenticate with a token (Authorization: Bearer ...)")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def csrf_rejected(request: HttpRequest) -> bool:
    # Read the body first: the CSRF check reads request.POST, which would otherwise consume the
    # stream of a form-encoded body and leave nothing for the JSON parser.
    _ = request.body
    return check_csrf(request) is not None


class BodyError(Exception):
    """A body that is not a JSON object; its message is what the client is told."""


class JsonObjectParser(Parser):
    """Only application/json bodies are parsed; any other body counts as absent, so that actions
    whose parameters are all optional accept a bare POST, and required bodies say what is wrong."""

    def parse_body(self, request: HttpRequest) -> Any:
        if request.content_type != "application/json":
            return None
        try:
            return json.loads(request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BodyError(f"the body is not valid JSON: {error}") from None
        except RecursionError:
            raise BodyError("the body is nested too deeply") from None


class SessionAuth(APIKeyCookie):
    """Django's session; CSRF is checked only for logged-in callers (an anonymous state change is a
    plain 401), with the answer in JSON."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        # `csrf` stays True (the docs page then sends the X-CSRFToken header with its requests),
        # but the check itself is done in authenticate(), for logged-in callers only.
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any | None:
        if not request.user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and csrf_rejected(request):
            raise ApiError(403, CSRF_MESSAGE)
        return request.user


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any | None:
        user = user_for_token(token)
        if user is not None:
            request.user = user  # permissions and created_by read request.user, as for sessions
        return user


api = NinjaAPI(
    title="bilevel API",
    version="1",
    description=__doc__ or "",
    urls_namespace="api",
    auth=[TokenAuth(), SessionAuth()],
    parser=JsonObjectParser(),
)


def error(request: HttpRequest, status: int, message: str, **extra: Any) -> HttpResponse:
    return api.create_response(request, {"error": message, **extra}, status=status)


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error(request, exc.status, exc.message, **exc.extra)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error(request, 401, "authentication required: log in with POST /api/session/ or send "
                                "Authorization: Bearer <token>")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    cause = exc.__cause__
    if isinstance(cause, BodyError | RequestDataTooBig):
        return error(request, 400, str(cause) if isinstance(cause, BodyError) else "the request body is too large")
    return error(request, exc.status_code, str(exc))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error(request, 400, "the request body is too large")


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error(request, 404, "not found")


def _describe(problem: dict[str, Any]) -> str:
    location = list(problem.get("loc", ()))
    parts = location[2:] if location[:2] == ["body", "payload"] else location[1:]
    where = ".".join(str(part) for part in parts) or "body"
    if problem.get("type") == "extra_forbidden":
        return f"unknown field(s): {where[:300]}"
    return f"{where}: {problem.get('msg', 'invalid')}"


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = exc.errors
    if any(p.get("loc", ("",))[0] == "body" for p in problems) and request.content_type != "application/json":
        return error(request, 400, "send a JSON body with Content-Type: application/json "
                                   f"(got {request.content_type or 'none'})")
    return error(request, 400, "; ".join(_describe(p) for p in problems[:10]))


ERRORS: dict[int, Any] = {code: ErrorOut for code in (400, 401, 403, 404)}


def responses(ok: Any, status: int = 200, *, conflict: bool = False) -> dict[int, Any]:
    return {status: ok, **ERRORS, **({409: ErrorOut} if conflict else {})}


def csrf_only(request: HttpRequest) -> bool:
    """Logging in and out need no identity but do need CSRF protection (against login CSRF); as an
    auth callback it runs before the body is validated, like the check on authenticated calls."""
    if csrf_rejected(request):
        raise ApiError(403, CSRF_MESSAGE)
    return True


def split_choices(values: list[str], name: str, choices: list[str]) -> list[str]:
    """Repeated and comma-separated values alike (?status=keep,discard or ?status=keep&status=discard)."""
    chosen = [v for raw in values for v in raw.split(",") if v]
    bad = [v for v in chosen if v not in choices]
    if bad:
        raise ApiError(400, f"query parameter {name}: unknown value(s) {', '.join(bad)[:100]}; "
                            f"allowed: {', '.join(choices)}")
    return chosen


def paginate(queryset: QuerySet[Any], page: int, size: int, serialize: Callable[[Any], Any]) -> dict[str, Any]:
    total = queryset.count()
    items = list(queryset[(page - 1) * size : page * size])
    return {"count": total, "page": page, "page_size": size, "pages": (total + size - 1) // size,
            "results": [serialize(item) for item in items]}


def get_or_404(queryset: QuerySet[Any], pk: int) -> Any:
    obj = queryset.filter(pk=pk).first() if 0 < pk <= MAX_ID else None
    if obj is None:
        raise ApiError(404, f"{queryset.model._meta.verbose_name} {pk} not found")
    return obj


PAGE = Query(1, ge=1, le=10**9, description="page number, from 1")
PAGE_SIZE = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description=f"1–{MAX_PAGE_SIZE}")
ID_FILTER = {"ge": 1, "le": MAX_ID}


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
        "real_confirmation_repeats": experiment.real_confirmation_repeats,
        "tuned_start": experiment.tuned_start or None,
        "review_gate": experiment.review_gate,
        "review_timeout_minutes": experiment.review_timeout_minutes,
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


# --- session and self-description ----------------------------------------------------------------


def _session_state(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    return {
        "authenticated": user.is_authenticated,
        "username": user.get_username() if user.is_authenticated else None,
        "can_review_mechanisms": user.has_perm(lifecycle.REVIEW_PERMISSION),
        "csrf_token": get_token(request),
    }


@api.get("/session/", auth=None, response=SessionOut, url_name="session", tags=["session"],
         summary="Who is logged in, and a CSRF token (sets the csrftoken cookie)")
def session_get(request: HttpRequest) -> dict[str, Any]:
    return _session_state(request)


@api.post("/session/", auth=csrf_only, response={200: SessionOut, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut},
          url_name="session", tags=["session"], summary="Log in; returns a fresh CSRF token for later state changes")
def session_login(request: HttpRequest, payload: LoginIn) -> dict[str, Any]:
    found = authenticate(request, username=payload.username, password=payload.password)
    if found is None:
        raise ApiError(401, "wrong username or password")
    login(request, found)
    return _session_state(request)


@api.delete("/session/", auth=csrf_only, response={200: SessionOut, 403: ErrorOut}, url_name="session",
            tags=["session"], summary="Log out")
def session_logout(request: HttpRequest) -> dict[str, Any]:
    logout(request)
    return _session_state(request)


@api.get("/", response=responses(IndexOut), url_name="api-root", summary="Where the schema and the docs are")
def index(request: HttpRequest) -> dict[str, Any]:
    from mechanisms.sandbox.host import isolation_status

    paths = sorted(api.get_openapi_schema()["paths"])
    level2 = isolation_status()
    return {"openapi": "/api/openapi.json", "docs": "/api/docs", "routes": paths,
            "level2_isolation": {"available": level2.available, "reason": level2.reason}}


# --- experiments and runs ------------------------------------------------------------------------


@api.get("/experiments/", response=responses(ExperimentPage), url_name="experiments", tags=["experiments"],
         summary="List experiments")
def experiments_list(request: HttpRequest, page: int = PAGE, page_size: int = PAGE_SIZE,
                     reference: bool | None = Query(None, description="only reference (imported) "
                                                                       "experiments, or only others")) -> Any:
    queryset = Experiment.objects.select_related("created_by").order_by("-created_at")
    if reference is not None:
        queryset = queryset.filter(is_reference=reference)
    return paginate(queryset, page, page_size, experiment_to_dict)


@api.post("/experiments/", response=responses(ExperimentDetailOut, 201), url_name="experiments",
          tags=["experiments"], summary="Create an experiment, its runs, and start them")
def experiments_create(request: HttpRequest, payload: ExperimentIn) -> Any:
    blank = ExperimentForm()
    defaults = {name: blank.get_initial_for_field(field, name) for name, field in blank.fields.items()}
    data = {**defaults, **payload.model_dump(exclude_none=True)}
    form = ExperimentForm(data=data)
    if not form.is_valid():
        errors = {name: [str(m) for m in messages] for name, messages in form.errors.items()}
        raise ApiError(400, "the experiment is not valid; nothing was created", fields=errors)
    experiment = form.save_and_start(request.user)
    return Status(201, experiment_to_dict(experiment, list(experiment.runs.order_by("group", "repeat"))))


@api.get("/experiments/{int:experiment_id}/", response=responses(ExperimentDetailOut), url_name="experiment",
         tags=["experiments"], summary="An experiment with its runs")
def experiment_detail(request: HttpRequest, experiment_id: int) -> Any:
    experiment = get_or_404(Experiment.objects.select_related("created_by"), experiment_id)
    return experiment_to_dict(experiment, list(experiment.runs.order_by("group", "repeat")))


@api.get("/experiments/{int:experiment_id}/comparison/", response=responses(dict[str, Any]),
         url_name="experiment_comparison", tags=["experiments"],
         summary="Comparison data (running best per group, summary, Welch tests, bootstrap CIs, parameters, "
                 "LLM usage)")
def experiment_comparison(
    request: HttpRequest, experiment_id: int,
    budget: int | None = Query(None, ge=0, le=100_000, description="proposals; default the experiment's T"),
    with_: list[int] = Query([], alias="with", max_length=5, description="other experiment ids (at most 5)"),
    test: Literal["permutation", "welch"] = Query("permutation", description="which test highlights a pair"),
    delta: Literal["auto", "search", "confirmed", "real"] = Query(
        "auto", description="search Δ, confirmed Δ (fresh seeds), real Δ (surrogate runs re-trained on the real "
                            "trainer), or auto: confirmed once available"),
) -> Any:
    experiment = get_or_404(Experiment.objects.all(), experiment_id)
    others = list(Experiment.objects.filter(pk__in=[pk for pk in with_ if 0 < pk <= MAX_ID]))
    missing = sorted(set(with_) - {e.pk for e in others})
    if missing:
        raise ApiError(404, f"experiment(s) {', '.join(map(str, missing))} not found")
    return build_comparison(experiment, others, budget=budget, test=test, delta_source=delta)


@api.get("/runs/", response=responses(RunPage), url_name="runs", tags=["runs"], summary="List runs")
def runs_list(
    request: HttpRequest, page: int = PAGE, page_size: int = PAGE_SIZE,
    experiment: int | None = Query(None, **ID_FILTER, description="experiment id"),
    group: list[str] = Query([], description="A, B, C, D, R (repeated or comma-separated)"),
    status: list[str] = Query([], description="run statuses (repeated or comma-separated)"),
) -> Any:
    queryset = Run.objects.order_by("experiment_id", "group", "repeat")
    if experiment is not None:
        queryset = queryset.filter(experiment_id=experiment)
    if groups := split_choices(group, "group", list(Group.values)):
        queryset = queryset.filter(group__in=groups)
    if statuses := split_choices(status, "status", list(RunStatus.values)):
        queryset = queryset.filter(status__in=statuses)
    return paginate(queryset, page, page_size, run_to_dict)


@api.get("/runs/{int:run_id}/", response=responses(RunDetailOut), url_name="run", tags=["runs"],
         summary="A run with its outer cycles and mechanisms")
def run_detail(request: HttpRequest, run_id: int) -> Any:
    run = get_or_404(Run.all_objects.select_related("experiment"), run_id)
    data = run_to_dict(run)
    data["iterations_url"] = f"/api/iterations/?run={run.pk}"
    data["outer_cycles"] = [outer_cycle_to_dict(c) for c in run.outer_cycles.order_by("index")]
    data["mechanisms"] = [attachment_to_dict(a) for a in
                          run.mechanism_attachments.select_related("mechanism", "run", "reviewed_by")]
    confirmed = confirmed_deltas([run])[run.pk]
    data["confirmed"] = confirmed.as_dict() if confirmed else None  # None until every confirmation is trained
    real = real_deltas([run])[run.pk]
    data["real_confirmed"] = real.as_dict() if real else None
    return data


@api.get("/runs/{int:run_id}/credit/", response=responses(dict[str, Any]), url_name="run_credit", tags=["runs"],
         summary="Counterfactual credit of the run's mechanisms (paired replays; positive = it helped)")
def run_credit(request: HttpRequest, run_id: int) -> Any:
    run = get_or_404(Run.objects.select_related("experiment"), run_id)
    return run_credits(run).as_dict()


@api.post("/runs/{int:run_id}/replays/", response=responses(dict[str, Any], 202, conflict=True),
          url_name="run_replays",
          tags=["runs"], summary="Queue the missing paired replays of a completed run (costs trainings on the "
                                 "real trainer; made by a task)")
def run_replays(request: HttpRequest, run_id: int) -> Any:
    run = get_or_404(Run.objects.select_related("experiment"), run_id)
    if not control.can_control(request.user, run.experiment):
        raise ApiError(403, "only the experiment's creator or staff may replay its runs")
    spans = mechanism_spans(run)
    if run.status != RunStatus.COMPLETED or not spans:
        raise ApiError(409, "only a completed run in which a mechanism was active can be replayed")
    trainings = replay.planned_trainings(run) if replay.replay_needs_trainings(run) else 0
    current_app.send_task(replay.OFFER_TASK, args=[run.pk])
    return Status(202, {"run": run.pk, "queued": True, "trainings_at_most": trainings})


@api.get("/mechanism-credit/", response=responses(dict[str, Any]), url_name="mechanism_credit",
         tags=["mechanisms"], summary="Every mechanism's mean credit with its 95% t interval and n (the library's)")
def mechanism_credit(request: HttpRequest) -> Any:
    names = dict(Mechanism.objects.values_list("pk", "name"))
    return {"sign": "credit = final best of the replay without it − the run's final best; positive = it helped",
            "flag_min_runs": FLAG_MIN_RUNS,
            "results": [{"mechanism": pk, "name": names.get(pk, ""), **summary.as_dict()}
                        for pk, summary in sorted(credit_by_mechanism().items())]}


def _run_action(request: HttpRequest, run_id: int, action: Callable[[Run], None]) -> Any:
    run = get_or_404(Run.all_objects.select_related("experiment"), run_id)
    if run.experiment.is_reference:
        raise ApiError(403, "reference experiments are read-only")
    if not control.can_control(request.user, run.experiment):
        raise ApiError(403, "only the experiment's creator or staff may control its runs")
    try:
        action(run)
    except control.TransitionError as refused:
        raise ApiError(409, str(refused)) from None
    run.refresh_from_db()
    return run_to_dict(run)


RUN_ACTION_SUMMARY = "{} the run (creator or staff; 409 if its state forbids it)"


@api.post("/runs/{int:run_id}/pause/", response=responses(RunOut, conflict=True), url_name="run_pause",
          tags=["runs"], summary=RUN_ACTION_SUMMARY.format("Pause"))
def run_pause(request: HttpRequest, run_id: int, payload: NoFieldsIn | None = None) -> Any:
    return _run_action(request, run_id, control.pause_run)


@api.post("/runs/{int:run_id}/resume/", response=responses(RunOut, conflict=True), url_name="run_resume",
          tags=["runs"], summary=RUN_ACTION_SUMMARY.format("Resume"))
def run_resume(request: HttpRequest, run_id: int, payload: NoFieldsIn | None = None) -> Any:
    return _run_action(request, run_id, control.resume_run)


@api.post("/runs/{int:run_id}/cancel/", response=responses(RunOut, conflict=True), url_name="run_cancel",
          tags=["runs"], summary=RUN_ACTION_SUMMARY.format("Cancel"))
def run_cancel(request: HttpRequest, run_id: int, payload: NoFieldsIn | None = None) -> Any:
    return _run_action(request, run_id, control.cancel_run)


@api.get("/runs/{int:run_id}/outer-cycles/", response=responses(OuterCyclesOut), url_name="run_outer_cycles",
         tags=["runs"], summary="The run's Level 1.5 outer cycles")
def outer_cycles(request: HttpRequest, run_id: int) -> Any:
    run = get_or_404(Run.all_objects.all(), run_id)
    return {"run": run.pk, "results": [outer_cycle_to_dict(c) for c in run.outer_cycles.order_by("index")]}


@api.get("/iterations/", response=responses(IterationPage), url_name="iterations", tags=["runs"],
         summary="Iterations, filtered and paginated")
def iterations(
    request: HttpRequest, page: int = PAGE, page_size: int = PAGE_SIZE,
    run: int | None = Query(None, **ID_FILTER, description="run id"),
    experiment: int | None = Query(None, **ID_FILTER, description="experiment id"),
    status: list[str] = Query([], description="baseline, keep, discard, crash, invalid_proposal"),
    kind: list[str] = Query([], description="baseline, baseline_repeat, proposal, reevaluation"),
    group: list[str] = Query([], description="run groups"),
    min_index: int | None = Query(None, ge=0, le=10**9, description="only index ≥ this"),
) -> Any:
    # A replay's iterations only when it is asked for by id.
    queryset = Iteration.objects.order_by("run_id", "index").filter(
        Q(run_id=run) if run is not None else Q(run__kind=RunKind.SEARCH))
    if experiment is not None:
        queryset = queryset.filter(run__experiment_id=experiment)
    if statuses := split_choices(status, "status", list(IterationStatus.values)):
        queryset = queryset.filter(status__in=statuses)
    if kinds := split_choices(kind, "kind", list(IterationKind.values)):
        queryset = queryset.filter(kind__in=kinds)
    if groups := split_choices(group, "group", list(Group.values)):
        queryset = queryset.filter(run__group__in=groups)
    if min_index is not None:
        queryset = queryset.filter(index__gte=min_index)
    return paginate(queryset, page, page_size, iteration_to_dict)


# --- mechanisms ------------------------------------------------------------------------------------


@api.get("/mechanisms/", response=responses(AttachmentPage), url_name="mechanisms", tags=["mechanisms"],
         summary="Mechanism attachments")
def mechanisms(
    request: HttpRequest, page: int = PAGE, page_size: int = PAGE_SIZE,
    status: list[str] = Query([], description="attachment statuses (repeated or comma-separated)"),
    run: int | None = Query(None, **ID_FILTER, description="run id"),
    experiment: int | None = Query(None, **ID_FILTER, description="experiment id"),
) -> Any:
    queryset = MechanismAttachment.objects.select_related("mechanism", "run", "reviewed_by").order_by("-created_at")
    if statuses := split_choices(status, "status", list(AttachmentStatus.values)):
        queryset = queryset.filter(status__in=statuses)
    if run is not None:
        queryset = queryset.filter(run_id=run)
    if experiment is not None:
        queryset = queryset.filter(run__experiment_id=experiment)
    return paginate(queryset, page, page_size, attachment_to_dict)


def _attachment(attachment_id: int) -> MechanismAttachment:
    return get_or_404(
        MechanismAttachment.objects.select_related("mechanism", "run__experiment", "session", "reviewed_by"),
        attachment_id,
    )


@api.get("/mechanisms/{int:attachment_id}/", response=responses(AttachmentDetailOut), url_name="mechanism",
         tags=["mechanisms"], summary="An attachment with code, spec, session artifacts, ladder, dry run and events")
def mechanism_detail(request: HttpRequest, attachment_id: int) -> Any:
    return attachment_to_dict(_attachment(attachment_id), detail=True)


def _review(request: HttpRequest, attachment_id: int, payload: CommentIn | RejectIn | None, action: str) -> Any:
    attachment = _attachment(attachment_id)
    comment = (payload.comment if payload else "").strip()
    if attachment.run.experiment.is_reference:
        raise ApiError(403, "reference experiments are read-only")
    if not request.user.has_perm(lifecycle.REVIEW_PERMISSION):
        raise ApiError(403, "you do not have permission to review mechanisms (mechanisms.review_mechanism)")
    if action == "reject" and not comment:
        raise ApiError(400, "a rejection needs a comment saying why")
    try:
        getattr(lifecycle, action)(attachment, request.user, comment)
    except lifecycle.ReviewError as refused:
        raise ApiError(409, str(refused)) from None
    return attachment_to_dict(_attachment(attachment_id), detail=True)


@api.post("/mechanisms/{int:attachment_id}/approve/", response=responses(AttachmentDetailOut, conflict=True),
          url_name="mechanism_approve", tags=["mechanisms"], summary="Approve (needs mechanisms.review_mechanism)")
def mechanism_approve(request: HttpRequest, attachment_id: int, payload: CommentIn | None = None) -> Any:
    return _review(request, attachment_id, payload, "approve")


@api.post("/mechanisms/{int:attachment_id}/reject/", response=responses(AttachmentDetailOut, conflict=True),
          url_name="mechanism_reject", tags=["mechanisms"],
          summary="Reject (needs mechanisms.review_mechanism; comment required)")
def mechanism_reject(request: HttpRequest, attachment_id: int, payload: RejectIn) -> Any:
    return _review(request, attachment_id, payload, "reject")


@api.post("/mechanisms/{int:attachment_id}/kill/", response=responses(AttachmentDetailOut, conflict=True),
          url_name="mechanism_kill", tags=["mechanisms"], summary="Kill (needs mechanisms.review_mechanism)")
def mechanism_kill(request: HttpRequest, attachment_id: int, payload: CommentIn | None = None) -> Any:
    return _review(request, attachment_id, payload, "kill")


@api.post("/paper-import/", response=responses(PaperImportOut, 201), url_name="paper_import",
          tags=["experiments"], summary="Import published paper reports into a reference experiment (all or nothing)")
def paper_import(request: HttpRequest, payload: PaperImportIn) -> Any:
    name = payload.experiment_name or DEFAULT_EXPERIMENT_NAME
    contents: list[tuple[str, bytes | str]] = [
        (entry.name, entry.content if isinstance(entry.content, str) else json.dumps(entry.content))
        for entry in payload.files
    ]
    try:
        experiment, created = import_reports(contents, name, request.user)
    except PaperImportError as failure:
        raise ApiError(400, f"nothing was imported: {failure}") from None
    return Status(201, {"experiment": experiment_to_dict(experiment), "runs": [run_to_dict(r) for r in created]})


def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return JsonResponse({"error": f"no API route /api/{rest}; see /api/docs"}, status=404)
