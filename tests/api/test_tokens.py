"""Per-user API tokens: created on the settings page and shown once, stored hashed, revocable; and
a token-authenticated script that creates an experiment, lets it run on a real worker and downloads
the comparison JSON from the real ASGI server."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.test import Client

from runs.models import ApiToken, Experiment
from tests.polling import wait_until

pytestmark = pytest.mark.django_db


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_on_settings_page(client: Client, name: str) -> str:
    response = client.post("/settings/tokens/", {"name": name})
    assert response.status_code == 200
    match = re.search(r'<pre id="new-token">([^<]+)</pre>', response.content.decode())
    assert match, "the new token is shown once on the page"
    return match.group(1)


def test_token_is_shown_once_stored_hashed_works_without_csrf_and_can_be_revoked(users: Any) -> None:
    page = Client(enforce_csrf_checks=False)
    page.force_login(users.plain)
    token = create_on_settings_page(page, "sweep script")
    stored = ApiToken.objects.get(user=users.plain)
    assert token not in str(list(ApiToken.objects.values_list()))  # only a digest and a short prefix
    assert token.startswith(stored.prefix) and len(token) > 40
    listing = page.get("/settings/tokens/").content.decode()
    assert "sweep script" in listing and token not in listing

    script = Client(enforce_csrf_checks=True)  # no cookies at all: the header is the whole identity
    assert script.get("/api/runs/", headers=bearer(token)).status_code == 200
    created = script.post("/api/experiments/", json.dumps({"name": "by token", "groups": ["A"]}),
                           content_type="application/json", headers=bearer(token))
    assert created.status_code == 201, created.content
    assert Experiment.objects.get(pk=created.json()["id"]).created_by == users.plain
    assert script.get("/api/runs/", headers=bearer(token + "x")).status_code == 401
    assert script.get("/api/runs/", headers=bearer("blv_" + "a" * 43)).status_code == 401

    intruder = Client()
    intruder.force_login(users.reviewer)
    intruder.post(f"/settings/tokens/{stored.pk}/revoke/")
    assert script.get("/api/runs/", headers=bearer(token)).status_code == 200  # someone else's token: untouched
    page.post(f"/settings/tokens/{stored.pk}/revoke/")
    refused = script.get("/api/runs/", headers=bearer(token))
    assert refused.status_code == 401 and "authentication required" in refused.json()["error"]
    assert "revoked" in page.get("/settings/tokens/").content.decode()


def test_settings_page_refuses_a_blank_name(users: Any) -> None:
    client = Client()
    client.force_login(users.plain)
    assert client.post("/settings/tokens/", {"name": ""}).status_code == 400
    assert not ApiToken.objects.exists()


def call(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, data, timeout=30) as response:
        return json.load(response)


@pytest.mark.services
def test_token_script_creates_starts_and_downloads_the_comparison(
    asgi_server: Any, celery_worker: Any, users: Any
) -> None:
    client = Client()
    client.force_login(users.plain)
    token = create_on_settings_page(client, "script")
    api = f"{asgi_server.url}/api"

    experiment = call(f"{api}/experiments/", token, "POST", {
        "name": "token script", "groups": ["A", "R"], "repeats": 1, "iterations": 3, "strategy_interval": 2,
        "objective": "surrogate", "review_gate": False, "real_confirmation_repeats": 0,
    })
    assert {r["status"] for r in experiment["runs"]} <= {"queued", "running"}  # created and started
    wait_until(lambda: all(r["status"] == "completed"
                           for r in call(f"{api}/runs/?experiment={experiment['id']}", token)["results"]),
               120, "the worker to complete every run", interval=0.3)
    comparison = call(f"{api}/experiments/{experiment['id']}/comparison/", token)
    assert {g["key"] for g in comparison["groups"]} == {"A", "R"}
    assert comparison["budget"] == 3

    ApiToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(f"{api}/runs/", token)
    assert refused.value.code == 401
