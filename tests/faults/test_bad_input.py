"""Malformed input on every form and API endpoint: wrong types, huge strings, unknown fields,
negative budgets, T=0, K>T, unicode, SQL/HTML injection strings, out-of-range ids and garbage
query parameters. Each gets a 4xx (or the form again, with its errors) and a clear message, never
a 500, and nothing is stored half-way."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment, MechanismEvent
from runs.models import Experiment, Iteration, Run
from tests.dashboard_review.factories import make_attachment

from .routes import all_routes

pytestmark = pytest.mark.django_db

HUGE = "x" * 200_000
HOSTILE_STRINGS = [
    "", "   ", HUGE, "ünïcödé 😀 \u202eevil\u202c", "\x00nul\x00", "'; DROP TABLE runs_run; --", "1 OR 1=1",
    "<script>alert(1)</script>", "{{ 7|add:7 }}{% debug %}", "../../etc/passwd", "²", "-1", "1e309", "NaN",
    "Infinity", "0x10", "[]", "{}", "null",
]
# The form re-renders on every refusal, so it gets the representative few.
FORM_STRINGS = ["", HUGE, "ünïcödé 😀 \u202eevil\u202c", "\x00nul\x00", "'; DROP TABLE runs_run; --",
                "<script>alert(1)</script>", "²", "-1", "NaN"]
HOSTILE_JSON = [*HOSTILE_STRINGS, None, True, False, 0, -1, -1e12, 2**70, -(2**70), 1e308, 0.5, [], {}, ["A"],
                {"$gt": 0}, [[1]]]
VALID: dict[str, Any] = {
    "name": "valid", "description": "", "groups": ["A", "B"], "repeats": 1, "iterations": 4,
    "strategy_interval": 2, "research_interval": 1, "objective": "surrogate", "preset": "cpu-tiny",
    "budget_kind": "flops", "budget_value": 1.5e12, "seed_base": 0, "threads": 1, "agent_backend": "builtin",
    "llm_base_url": "", "llm_model": "", "llm_api_key": "", "acceptance_policy": "strict", "noise_k": 2.0,
    "baseline_repeats": 3, "review_gate": True,
}
# Combinations that are invalid as a whole, each field on its own being fine.
INVALID_COMBINATIONS: list[dict[str, Any]] = [
    {"iterations": 0},
    {"iterations": 3, "strategy_interval": 5},  # K > T
    {"budget_value": -1.5e12},
    {"budget_kind": "seconds", "budget_value": 1.5e12},
    {"budget_kind": "seconds", "budget_value": -30},
    {"repeats": 0},
    {"groups": []},
    {"groups": ["A", "A", "Z"]},
    {"agent_backend": "llm"},
    {"agent_backend": "llm", "llm_base_url": "javascript:alert(1)", "llm_model": "m"},
    {"agent_backend": "llm", "llm_base_url": "http://x/" + "a" * 600, "llm_model": "m"},
]


class Failures(list[str]):
    def check(self, ok: bool, where: str) -> None:
        if not ok:
            self.append(where)

    def done(self) -> None:
        assert not self, f"{len(self)} problem(s):\n" + "\n".join(self[:40])


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture, settings: Any) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with caplog.at_level(logging.ERROR, logger="django.request"):
        yield
    errors = [r.getMessage() for r in caplog.records if "Internal Server Error" in r.getMessage()]
    assert not errors, errors


@pytest.fixture
def admin_client(users: Any) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(users.admin)  # every permission, so only validation can refuse
    return client


@pytest.fixture
def no_enqueue(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    queued: list[int] = []
    monkeypatch.setattr("runs.engine.control.enqueue_step", queued.append)
    return queued


def stored() -> tuple[int, ...]:
    return (Experiment.objects.count(), Run.objects.count(), Iteration.objects.count(), Mechanism.objects.count(),
            MechanismAttachment.objects.count(), MechanismEvent.objects.count())


def text(response: Any) -> str:
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return raw.decode(errors="replace")


def api_error(response: Any) -> str:
    try:
        return str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""


def forget_created(response: Any) -> None:
    """A hostile-looking value that is still valid (e.g. an HTML name) may create an experiment: drop it."""
    Experiment.objects.filter(name__in=[VALID["name"]]).delete()
    Experiment.objects.exclude(pk__in=[]).filter(runs__isnull=False).delete()


# --- the JSON API ------------------------------------------------------------------------------


def test_api_experiment_create_refuses_every_bad_field_cleanly(admin_client: Client, no_enqueue: list[int]) -> None:
    failures = Failures()
    before = stored()
    runs_created = 0
    cases: list[tuple[str, Any]] = [(f"{field}={value!r:.40}", {**VALID, field: value})
                                    for field in VALID for value in HOSTILE_JSON]
    cases += [(f"combination {c}", {**VALID, **c}) for c in INVALID_COMBINATIONS]
    cases += [("unknown field", {**VALID, "is_reference": True}), ("unknown field 2", {**VALID, "__class__": "x"})]
    for where, payload in cases:
        response = admin_client.post("/api/experiments/", json.dumps(payload), content_type="application/json")
        if response.status_code == 201:  # still a valid experiment (e.g. an odd but legal name): stored whole
            created = Experiment.objects.get(pk=response.json()["id"])
            failures.check(created.runs.count() == len(created.groups) * created.repeats, f"{where}: runs missing")
            runs_created += created.runs.count()
            Experiment.objects.filter(pk=created.pk).delete()
            continue
        failures.check(response.status_code == 400, f"{where}: {response.status_code}")
        failures.check(bool(api_error(response)), f"{where}: no error message")
        failures.check(stored() == before, f"{where}: stored something")
    for case in INVALID_COMBINATIONS:
        body = json.dumps({**VALID, **case})
        response = admin_client.post("/api/experiments/", body, content_type="application/json")
        failures.check(response.status_code == 400, f"{case} was accepted")
    failures.check(len(no_enqueue) == runs_created, "a refused experiment queued a step")
    failures.done()


def test_api_bodies_of_every_shape(admin_client: Client, users: Any) -> None:
    attachment = make_attachment()
    run = attachment.run
    before = stored()
    bodies: list[tuple[str, Any]] = [
        ("not json", b"{not json"), ("array", b"[1,2]"), ("string", b'"x"'), ("number", b"5"), ("null", b"null"),
        ("bad utf-8", b'{"comment": "\xff\xfe"}'), ("nested", json.dumps({"a": [[[[[[{}]]]]]]}).encode()),
        ("huge", json.dumps({"comment": HUGE}).encode()), ("deep", b"[" * 100_000 + b"]" * 100_000),
        ("nan", b'{"comment": NaN}'), ("unknown", b'{"colour": "red"}'), ("comment type", b'{"comment": 5}'),
        ("empty", b""),
    ]
    failures = Failures()
    posts = [f"/api/mechanisms/{attachment.pk}/{a}/" for a in ("approve", "reject", "kill")]
    posts += [f"/api/runs/{run.pk}/{a}/" for a in ("pause", "resume", "cancel")]
    posts += ["/api/experiments/", "/api/paper-import/", "/api/session/"]
    for path in posts:
        for where, body in bodies:
            for content_type in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
                response = admin_client.post(path, body, content_type=content_type)
                label = f"POST {path} {where} as {content_type}"
                failures.check(response.status_code < 500, f"{label}: {response.status_code}")
                if response.status_code >= 400:
                    failures.check(bool(api_error(response)), f"{label}: no JSON error message")
    # Only the legitimate state changes could have happened (e.g. an empty pause): nothing was created.
    failures.check(stored()[:3] == before[:3], "an experiment, run or iteration was created")
    failures.done()


def test_api_paper_import_garbage(admin_client: Client) -> None:
    good = {"group": "A", "repeat": 1, "baseline_bpb": 1.1, "best_val_bpb": 1.1, "best_iteration": 0,
            "improvement": 0.0, "trace": [{"iter": 0, "bpb": 1.1, "status": "keep", "desc": "baseline"}]}
    mutations: list[Any] = [{**good, key: value} for key in good for value in HOSTILE_JSON[:20]]
    mutations += [{**good, "trace": [{"iter": i, "bpb": -1, "status": "keep", "desc": HUGE}] * 3} for i in (0, 1)]
    mutations += [{**good, "trace": [{"iter": 0, "bpb": float("nan"), "status": "keep", "desc": ""}]}]
    mutations += [{**good, "trace": [{"iter": 0, "bpb": 1.1, "status": "keep", "desc": "baseline\x00"}]}]
    mutations += [HUGE, 5, None, [], "{"]
    failures = Failures()
    before = stored()
    for position, content in enumerate(mutations):
        for name in ("A1.json", "../<b>\x00.json"):
            payload = {"files": [{"name": name, "content": content}]}
            body = json.dumps(payload, allow_nan=True)
            response = admin_client.post("/api/paper-import/", body, content_type="application/json")
            where = f"mutation {position} name {name[:20]!r}"
            if response.status_code == 201:
                Experiment.objects.filter(pk=response.json()["experiment"]["id"]).delete()
                continue
            failures.check(response.status_code == 400 and bool(api_error(response)),
                           f"{where}: {response.status_code} {api_error(response)[:80]}")
            failures.check(stored() == before, f"{where}: stored something")
    failures.done()


# --- the dashboard's forms ----------------------------------------------------------------------


def test_experiment_form_refuses_every_bad_field_cleanly(admin_client: Client, no_enqueue: list[int]) -> None:
    failures = Failures()
    before = stored()
    runs_created = 0
    form_valid = {**VALID, "review_gate": "on"}
    cases: list[tuple[str, dict[str, Any]]] = []
    for field in form_valid:
        for value in FORM_STRINGS:
            cases.append((f"{field}={value!r:.40}", {**form_valid, field: value}))
        cases.append((f"{field} repeated", {**form_valid, field: ["1", "2"]}))
    cases += [(f"combination {c}", {**form_valid, **c}) for c in INVALID_COMBINATIONS]
    cases += [("unknown field", {**form_valid, "is_reference": "on", "created_by": "1"})]
    for where, data in cases:
        response = admin_client.post("/experiments/new/", data)
        if response.status_code == 302:
            created = Experiment.objects.order_by("-pk").first()
            assert created is not None
            failures.check(not created.is_reference and created.runs.count() == len(created.groups) * created.repeats,
                           f"{where}: stored wrongly")
            runs_created += created.runs.count()
            Experiment.objects.filter(pk=created.pk).delete()
            continue
        failures.check(response.status_code in (200, 400), f"{where}: {response.status_code}")
        failures.check("errorlist" in text(response) or "Nothing was created" in text(response),
                       f"{where}: no error shown")
        failures.check(stored() == before, f"{where}: stored something")
    for case in INVALID_COMBINATIONS:
        response = admin_client.post("/experiments/new/", {**form_valid, **case})
        failures.check(response.status_code != 302, f"{case} was accepted")
    failures.check(len(no_enqueue) == runs_created, "a refused experiment queued a step")
    failures.done()


def test_review_and_library_forms(admin_client: Client) -> None:
    pending = make_attachment()
    library = make_attachment(status=AttachmentStatus.ACTIVE, cycle=2)
    failures = Failures()
    for value in HOSTILE_STRINGS:
        events = MechanismEvent.objects.count()
        response = admin_client.post(f"/mechanisms/{pending.pk}/reject/", {"comment": value})
        pending.refresh_from_db()
        if response.status_code == 302:  # a real comment: the rejection happened, with the comment as given
            failures.check(pending.status == AttachmentStatus.REJECTED and pending.review_comment == value.strip(),
                           f"reject with {value!r:.30}: stored {pending.review_comment!r:.30}")
            MechanismAttachment.objects.filter(pk=pending.pk).update(status=AttachmentStatus.PENDING)
            continue
        failures.check(response.status_code == 400, f"reject with {value!r:.30}: {response.status_code}")
        failures.check(pending.status == AttachmentStatus.PENDING and MechanismEvent.objects.count() == events,
                       f"reject with {value!r:.30}: changed state")
    for value in [*HOSTILE_STRINGS, "99999999999999999999999", "0"]:
        response = admin_client.post(f"/mechanisms/library/{library.mechanism_id}/attach/", {"experiment": value})
        failures.check(response.status_code in (302, 400), f"attach experiment={value!r:.30}: {response.status_code}")
        failures.check(not Experiment.library_mechanisms.through.objects.exists(), f"attach {value!r:.30} stored")
    failures.done()


def test_paper_upload_form_garbage(admin_client: Client) -> None:
    failures = Failures()
    before = stored()
    uploads: list[tuple[str, bytes]] = [("A1.json", b"{not json"), ("A1.json", b""), ("A1.json", b"\xff\xfe\x00"),
                                        ("A1.json", b"[]"), ("A1.json", json.dumps({"group": "<b>"}).encode()),
                                        ("x" * 300 + ".json", b"{}"), ("A1.json", b"{" * 50_000)]
    for name, data in uploads:
        for experiment_name in ("", HUGE[:1000], "<script>alert(1)</script>", "ünï", "nul\x00"):
            response = admin_client.post("/experiments/import-paper/", {
                "experiment_name": experiment_name, "files": [SimpleUploadedFile(name, data, "application/json")]})
            where = f"{name[:20]} {data[:20]!r} name={experiment_name[:20]!r}"
            failures.check(response.status_code == 400 and "Nothing was imported" in text(response),
                           f"{where}: {response.status_code}")
            failures.check(stored() == before, f"{where}: stored something")
    valid = json.dumps({"group": "A", "repeat": 1, "baseline_bpb": 1.1, "best_val_bpb": 1.1, "best_iteration": 0,
                        "improvement": 0.0, "trace": [{"iter": 0, "bpb": 1.1, "status": "keep", "desc": "baseline"}]})
    response = admin_client.post("/experiments/import-paper/", {
        "experiment_name": "nul\x00", "files": [SimpleUploadedFile("A1.json", valid.encode(), "application/json")]})
    failures.check(response.status_code == 400 and "NUL" in text(response), f"NUL name: {response.status_code}")
    failures.check(stored() == before, "NUL name: stored something")
    response = admin_client.post("/experiments/import-paper/", {"experiment_name": "x"})
    failures.check(response.status_code == 400 and "Choose at least one" in text(response), "no files")
    failures.done()


def test_login_forms_with_garbage(client: Client, users: Any) -> None:
    failures = Failures()
    client.raise_request_exception = False
    for value in HOSTILE_STRINGS:
        response = client.post("/accounts/login/", {"username": value, "password": value})
        failures.check(response.status_code in (200, 400), f"login form {value!r:.30}: {response.status_code}")
        response = client.post("/api/session/", json.dumps({"username": value, "password": value}),
                               content_type="application/json")
        failures.check(response.status_code in (400, 401) and bool(api_error(response)),
                       f"API login {value!r:.30}: {response.status_code}")
    failures.done()


# --- every route: absurd ids and garbage query parameters ---------------------------------------


GARBAGE_QUERIES = [
    "page=-1", "page=abc", "page=99999999999999999999", "per_page=abc", "per_page=-5", "page_size=100000000000",
    "page_size=-1", "sort=<script>", "sort=password", "status=bogus", "status=keep&status=<b>", "kind=x",
    "group=Z", "param=LR", "min_bpb=nan", "max_bpb=-inf", "min_bpb=3&max_bpb=1", "min_bpb=1e999",
    f"q={HUGE[:5000]}", "q=%00", "budget=abc", "budget=-5", "budget=999999999999", "with=%C2%B2", "with=abc",
    "with=99999999999999999999", "with=-1", "format=xml", "format=csv&status=bogus", "reference=maybe",
    "run=abc", "run=-5", "run=99999999999999999999", "experiment=%C2%B2", "min_index=-1", "mode=<x>",
]


def test_every_get_route_survives_garbage_queries_and_absurd_ids(admin_client: Client) -> None:
    attachment = make_attachment()
    ids = {"experiment_id": attachment.run.experiment_id, "run_id": attachment.run_id,
           "attachment_id": attachment.pk, "mechanism_id": attachment.mechanism_id, "object_id": 1,
           "content_type_id": 1, "id": 1}
    failures = Failures()
    for route in [r for r in all_routes(ids) if not r.name.startswith("admin:")]:
        if admin_client.get(route.path).status_code == 405:
            continue  # POST only: a GET never reaches the query parsing (checked with POSTs elsewhere)
        for query in GARBAGE_QUERIES:
            response = admin_client.get(f"{route.path}?{query}")
            failures.check(response.status_code < 500, f"GET {route.path}?{query[:40]}: {response.status_code}")
            if route.name.startswith("api:") and response.status_code >= 400:
                failures.check(bool(api_error(response)), f"GET {route.path}?{query[:40]}: no JSON error")
    huge = {key: 2**70 for key in ids} | {"object_id": 2**70}
    negative_paths = [route.path.replace(str(ids["run_id"]), "0") for route in all_routes(ids)]
    for path in [route.path for route in all_routes(huge)] + negative_paths:
        for method in ("get", "post"):
            response = getattr(admin_client, method)(path)
            failures.check(response.status_code < 500, f"{method.upper()} {path}: {response.status_code}")
    failures.done()
