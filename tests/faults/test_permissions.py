"""Permissions on every route (enumerated from the resolver): anonymous users get nothing, a plain
user cannot approve/reject/kill/attach or control someone else's runs, and CSRF is enforced on
every state-changing request. Nothing changes in the database in any of these cases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment, MechanismEvent, ResearchSession
from runs.models import Experiment, Iteration, LLMCall, OuterCycle, Run
from tests.dashboard_review.factories import make_attachment

from .routes import all_routes

pytestmark = pytest.mark.django_db
SECRET = "secret-experiment-7f3a"
# Routes anyone may use: logging in and out, and the API's self-description.
PUBLIC = {"login", "logout", "admin:login", "admin:logout", "api:openapi-json", "api:openapi-view", "api:session"}
# State changes a plain user (not the creator, not staff, no review permission) must be refused.
PRIVILEGED_SUFFIXES = ("approve", "reject", "kill", "attach", "pause", "resume", "cancel")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(users: Any) -> dict[str, int]:
    """One of everything, created by the admin (so the plain user owns nothing)."""
    pending = make_attachment()
    active = make_attachment(status=AttachmentStatus.ACTIVE, run=pending.run, cycle=2)
    experiment = pending.run.experiment
    Experiment.objects.filter(pk=experiment.pk).update(name=SECRET, created_by=users.admin)
    run = pending.run
    Run.objects.filter(pk=run.pk).update(status="running")
    Iteration.objects.create(run=run, index=0, kind="baseline", status="baseline", val_bpb=2.7,
                             hypothesis=SECRET)
    OuterCycle.objects.create(run=run, index=1, after_iteration=0, guidance=SECRET)
    return {
        "experiment_id": experiment.pk, "run_id": run.pk, "attachment_id": pending.pk, "active_id": active.pk,
        "mechanism_id": pending.mechanism_id, "object_id": experiment.pk, "content_type_id": 1, "id": 1,
    }


def fingerprint() -> dict[str, Any]:
    user_model = get_user_model()
    return {
        "experiments": list(Experiment.objects.order_by("pk").values_list("pk", "name", "created_by")),
        "library": list(Experiment.library_mechanisms.through.objects.order_by("pk").values_list("pk")),
        "runs": list(Run.objects.order_by("pk").values_list("pk", "status", "step_ticket", "status_detail")),
        "iterations": Iteration.objects.count(),
        "cycles": OuterCycle.objects.count(),
        "attachments": list(MechanismAttachment.objects.order_by("pk").values_list("pk", "status", "reviewed_by")),
        "mechanisms": Mechanism.objects.count(),
        "events": MechanismEvent.objects.count(),
        "sessions": ResearchSession.objects.count(),
        "llm_calls": LLMCall.objects.count(),
        "users": list(user_model.objects.order_by("pk").values_list("pk", "password", "is_staff", "is_superuser")),
    }


def content(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_every_route_is_enumerated(world: dict[str, int]) -> None:
    names = {route.name for route in all_routes(world)}
    for expected in ("home", "run_detail", "run_pause", "mechanism_approve", "mechanism_library_attach",
                     "api:runs", "api:mechanism_kill", "experiment_compare", "paper_import", "admin:index"):
        assert expected in names


def test_anonymous_users_get_nothing_anywhere(client: Client, world: dict[str, int]) -> None:
    before = fingerprint()
    for route in all_routes(world):
        for method in ("get", "post", "delete"):
            response = getattr(client, method)(route.path)
            where = f"{method.upper()} {route.path} ({route.name})"
            assert response.status_code < 500, where
            assert SECRET.encode() not in content(response), f"{where} leaked data"
            if route.name in PUBLIC:
                continue
            if response.status_code in (301, 302):
                assert "/login/" in response["Location"], f"{where} redirected to {response['Location']}"
            else:
                assert response.status_code in (401, 403, 404, 405), f"{where}: {response.status_code}"
    assert fingerprint() == before


def test_anonymous_websocket_is_refused(world: dict[str, int]) -> None:
    from bilevel_site.asgi import application

    async def connect(path: str, cookie: str | None) -> Any:
        headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        result = await communicator.connect(timeout=10)
        await communicator.disconnect()
        return result

    for cookie in (None, "sessionid=forged-session-key"):
        connected, code = asyncio.run(connect(f"/ws/runs/{world['run_id']}/", cookie))
        assert not connected and code == 4401


def test_a_plain_user_cannot_review_attach_or_control_others_runs(users: Any, world: dict[str, int]) -> None:
    client = Client()
    client.force_login(users.plain)
    privileged = [r for r in all_routes(world) if r.name.rstrip("/").endswith(PRIVILEGED_SUFFIXES)]
    assert len(privileged) >= 13  # approve/reject/kill × (page, API), attach, pause/resume/cancel × (page, API)
    before = fingerprint()
    for route in privileged:
        paths = {route.path}
        if "<int:attachment_id>" in route.raw:  # the pending one (approve/reject) and the active one (kill)
            paths.add(route.path.replace(f"/{world['attachment_id']}/", f"/{world['active_id']}/"))
        for path in paths:
            if route.name.startswith("api:"):
                body = {"comment": "let me in"} if route.name.startswith("api:mechanism") else {}
                response = client.post(path, json.dumps(body), content_type="application/json")
            else:
                response = client.post(path, {"comment": "let me in", "experiment": world["experiment_id"]})
            assert response.status_code == 403, f"POST {path} ({route.name}): {response.status_code}"
    assert fingerprint() == before


def test_csrf_is_enforced_on_every_state_changing_request(users: Any, world: dict[str, int]) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(users.admin)  # may do everything, so only CSRF can stop it
    before = fingerprint()
    sessions = Session.objects.count()
    refused = 0
    for route in all_routes(world):
        for method in ("post", "put", "patch", "delete"):
            response = getattr(client, method)(route.path, "{}", content_type="application/json")
            where = f"{method.upper()} {route.path} ({route.name})"
            if route.name == "api:not_found":
                assert response.status_code == 404, where
                continue
            # 405: the route does not take this method at all (checked before CSRF by the API).
            assert response.status_code in (403, 405), f"{where}: {response.status_code}"
            refused += response.status_code == 403
    assert refused > 40
    assert fingerprint() == before and Session.objects.count() == sessions

    # The same request with the token goes through, so the 403s above were CSRF and nothing else.
    token = client.get("/api/session/").json()["csrf_token"]
    response = client.post(f"/api/runs/{world['run_id']}/pause/", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and Run.objects.get(pk=world["run_id"]).status == "paused"
