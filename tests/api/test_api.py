"""The JSON API (django-ninja): auth (401/403 JSON, never a redirect), CSRF, permissions, malformed
input, the generated OpenAPI schema and the locally served docs page."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from mechanisms.models import AttachmentStatus
from mechanisms.validation.ladder import PAPER_RUNS_DIR
from runs.models import Experiment, Iteration, Run
from tests.conftest import PASSWORD
from tests.dashboard_review.factories import make_attachment
from tests.stats.factories import make_experiment

pytestmark = pytest.mark.django_db
FIXTURES = PAPER_RUNS_DIR


def post_json(client: Client, path: str, data: Any, **extra: Any) -> Any:
    body = data if isinstance(data, str | bytes) else json.dumps(data)
    return client.post(path, body, content_type="application/json", **extra)


def csrf_client(user: Any) -> tuple[Client, str]:
    """A client that enforces CSRF, logged in through the API the way a script would."""
    client = Client(enforce_csrf_checks=True)
    token = client.get("/api/session/").json()["csrf_token"]
    response = post_json(client, "/api/session/", {"username": user.username, "password": PASSWORD},
                         HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    assert response.json()["authenticated"] is True
    return client, response.json()["csrf_token"]


@pytest.mark.parametrize("path", ["/api/", "/api/experiments/", "/api/runs/", "/api/iterations/", "/api/mechanisms/",
                                  "/api/experiments/1/", "/api/experiments/1/comparison/", "/api/runs/1/"])
def test_anonymous_gets_401_json_not_a_redirect(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert "authentication required" in response.json()["error"]


def test_the_schema_states_the_limits_the_server_enforces(client: Client) -> None:
    """A body valid by the schema is not refused for a bound the schema does not state."""
    schemas = client.get("/api/openapi.json").json()["components"]["schemas"]
    experiment = schemas["ExperimentIn"]["properties"]

    def bounds(name: str) -> tuple[Any, Any]:
        (number,) = [option for option in experiment[name]["anyOf"] if option["type"] != "null"]
        return number["minimum"], number["maximum"]

    assert bounds("repeats") == (1, 50)
    assert bounds("iterations") == (1, 1000) and bounds("strategy_interval") == (1, 1000)
    assert "K ≤ T" in experiment["strategy_interval"]["description"]
    assert bounds("threads")[0] == 1 and bounds("baseline_repeats") == (2, 20)
    reject = schemas["RejectIn"]
    assert reject["required"] == ["comment"] and reject["properties"]["comment"]["minLength"] == 1
    assert not re.match(reject["properties"]["comment"]["pattern"], "   ")  # blank is no reason


def test_openapi_lists_every_route_and_is_json(client: Client) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    from runs.api.urls import urlpatterns

    self_description = {"not_found", "openapi-json", "openapi-view"}
    routes = [p for p in urlpatterns if isinstance(p, URLPattern) and p.name not in self_description]
    assert len(document["paths"]) == len(routes)
    for pattern in routes:
        openapi_path = "/api/" + str(pattern.pattern).replace("<int:", "{").replace(">", "}")
        assert openapi_path in document["paths"], openapi_path
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}  # bearer token and session cookie
    for url, item in document["paths"].items():
        braces = {part[1:-1] for part in url.split("/") if part.startswith("{")}
        for operation in item.values():
            assert operation["summary"] and operation["responses"] and operation["operationId"]
            assert {p["name"] for p in operation["parameters"] if p["in"] == "path"} == braces
    # The API is mounted exactly once.
    assert any(isinstance(p, URLResolver) and str(p.pattern) == "api/" for p in get_resolver().url_patterns)


def test_docs_page_is_served_locally_without_a_cdn(client: Client) -> None:
    page = client.get("/api/docs").content.decode()
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/static/ninja/swagger-ui-bundle.js" in scripts and all(s.startswith("/static/") for s in scripts)
    assert 'data-api-csrf="true"' in page  # Swagger UI's "try it out" sends the CSRF header with the session
    for asset in scripts:
        assert client.get(asset).status_code == 200, asset


def test_login_logout_and_wrong_password() -> None:
    client = Client(enforce_csrf_checks=True)
    token = client.get("/api/session/").json()["csrf_token"]
    assert post_json(client, "/api/session/", {"username": "x", "password": "y"}).status_code == 403  # no CSRF
    wrong = post_json(client, "/api/session/", {"username": "nobody", "password": "y"}, HTTP_X_CSRFTOKEN=token)
    assert wrong.status_code == 401 and wrong.json()["error"] == "wrong username or password"


def test_csrf_is_enforced_on_state_changes(users: Any) -> None:
    attachment = make_attachment()
    client, token = csrf_client(users.reviewer)
    refused = post_json(client, f"/api/mechanisms/{attachment.pk}/approve/", {"comment": "ok"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING
    done = post_json(client, f"/api/mechanisms/{attachment.pk}/approve/", {"comment": "ok"}, HTTP_X_CSRFTOKEN=token)
    assert done.status_code == 200 and done.json()["status"] == "approved"
    assert client.delete("/api/session/", HTTP_X_CSRFTOKEN=token).json()["authenticated"] is False
    assert client.get("/api/runs/").status_code == 401


def test_plain_user_cannot_approve(client: Client, users: Any) -> None:
    attachment = make_attachment()
    client.force_login(users.plain)
    response = post_json(client, f"/api/mechanisms/{attachment.pk}/approve/", {})
    assert response.status_code == 403 and "permission" in response.json()["error"]
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.PENDING


def test_reviewer_mechanism_flow_and_conflicts(client: Client, users: Any) -> None:
    attachment = make_attachment()
    client.force_login(users.reviewer)
    detail = client.get(f"/api/mechanisms/{attachment.pk}/").json()
    assert detail["session"]["artifacts"]["explore"]["seconds"] == 1.25 and detail["ladder_ok"] is True
    assert post_json(client, f"/api/mechanisms/{attachment.pk}/reject/", {}).status_code == 400
    assert post_json(client, f"/api/mechanisms/{attachment.pk}/kill/", {}).status_code == 409
    ok = post_json(client, f"/api/mechanisms/{attachment.pk}/reject/", {"comment": "unsafe"})
    assert ok.status_code == 200 and ok.json()["status"] == "rejected"
    assert [e["to"] for e in ok.json()["events"]][-1] == "rejected"
    listed = client.get("/api/mechanisms/?status=rejected").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == attachment.pk


@pytest.mark.parametrize(("body", "message"), [
    ("not json", "Content-Type"),
])
def test_non_json_content_type(client: Client, users: Any, body: str, message: str) -> None:
    client.force_login(users.admin)
    response = client.post("/api/experiments/", body, content_type="text/plain")
    assert response.status_code == 400 and message in response.json()["error"]


@pytest.mark.parametrize(("payload", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "body: Input should be a valid dictionary"),
    ({"name": "x", "groups": ["A"], "colour": "red"}, "unknown field(s): colour"),
    ({"name": "x", "groups": "A"}, "groups: Input should be a valid list"),
    ({"name": "x", "groups": ["A"], "repeats": "3"}, "repeats: Input should be a valid integer"),
    ({"name": "x", "groups": ["A"], "repeats": True}, "repeats: Input should be a valid integer"),
    ({"name": "x", "groups": ["A"], "repeats": -2}, "repeats: Input should be greater than or equal to 1"),
    ({"name": "x", "groups": ["A"], "repeats": 51}, "repeats: Input should be less than or equal to 50"),
    ({"name": "x", "groups": ["A"], "iterations": 3, "strategy_interval": 4}, "the experiment is not valid"),
    ({"name": "x", "groups": ["A"], "budget_value": "lots"}, "budget_value: Input should be a valid number"),
    ({"name": "x" * 20_000, "groups": ["A"]}, "name: String should have at most 200 characters"),
    ({"name": "x", "groups": ["Z"]}, "groups.0: Input should be 'A'"),
    ({"name": "x", "groups": ["A"], "review_gate": "yes"}, "review_gate: Input should be a valid boolean"),
    ({"name": 5, "groups": ["A"]}, "name: Input should be a valid string"),
    ({"groups": ["A"]}, "name: Field required"),
    ({"name": "nul\x00", "groups": ["A"]}, "name: String should match pattern"),
])
def test_malformed_experiment_payloads_are_400_and_store_nothing(
    client: Client, users: Any, payload: Any, message: str
) -> None:
    client.force_login(users.admin)
    response = post_json(client, "/api/experiments/", payload)
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]
    assert Experiment.objects.count() == 0 and Run.objects.count() == 0


def test_create_experiment_with_the_dashboard_form(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    response = post_json(client, "/api/experiments/", {
        "name": "api made", "groups": ["A", "R"], "repeats": 2, "iterations": 4, "strategy_interval": 2,
        "research_interval": 1, "objective": "trainer", "preset": "cpu-tiny", "budget_kind": "flops",
        "budget_value": 3e12, "seed_base": 0, "threads": 2, "agent_backend": "builtin",
        "acceptance_policy": "strict", "noise_k": 2.0, "baseline_repeats": 3, "review_gate": True,
        "llm_api_key": "sk-secret",
    })
    assert response.status_code == 201, response.content
    data = response.json()
    assert "sk-secret" not in response.content.decode() and data["llm_api_key_set"] is False
    assert sorted((r["group"], r["repeat"]) for r in data["runs"]) == [("A", 1), ("A", 2), ("R", 1), ("R", 2)]
    assert Experiment.objects.get(pk=data["id"]).created_by == users.plain


def test_lists_filter_and_paginate(client: Client, users: Any) -> None:
    experiment = make_experiment(groups=("A", "R"), repeats=2, iterations=5)
    client.force_login(users.plain)
    runs = client.get(f"/api/runs/?experiment={experiment.pk}&group=R").json()
    assert runs["count"] == 2 and {r["group"] for r in runs["results"]} == {"R"}
    page = client.get(f"/api/iterations/?experiment={experiment.pk}&page_size=7&page=2").json()
    assert page["count"] == 4 * 6 and page["pages"] == 4 and len(page["results"]) == 7
    kept = client.get(f"/api/iterations/?experiment={experiment.pk}&status=keep").json()
    assert kept["count"] == Iteration.objects.filter(run__experiment=experiment, status="keep").count()
    detail = client.get(f"/api/experiments/{experiment.pk}/").json()
    assert len(detail["runs"]) == 4
    comparison = client.get(f"/api/experiments/{experiment.pk}/comparison/?budget=3").json()
    assert comparison["budget"] == 3 and {g["key"] for g in comparison["groups"]} == {"A", "R"}
    run_id = runs["results"][0]["id"]
    assert client.get(f"/api/runs/{run_id}/outer-cycles/").json() == {"run": run_id, "results": []}


@pytest.mark.parametrize("query", ["page=0", "page=x", "page_size=100000", "status=bogus", "run=-1", "kind=nope"])
def test_bad_query_parameters_are_400(client: Client, users: Any, query: str) -> None:
    client.force_login(users.plain)
    response = client.get(f"/api/iterations/?{query}")
    assert response.status_code == 400 and response.json()["error"]


def test_unknown_routes_objects_and_methods(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    assert client.get("/api/nope/").status_code == 404
    assert client.get("/api/runs/999999/").json()["error"] == "run 999999 not found"
    assert client.get("/api/experiments/999/comparison/").status_code == 404
    response = client.delete("/api/experiments/")
    assert response.status_code == 405 and set(response["Allow"].split(", ")) == {"GET", "POST"}


def test_run_control_permissions_and_conflicts(client: Client, users: Any) -> None:
    experiment = Experiment.objects.create(name="mine", groups=["A"], created_by=users.reviewer)
    run = Run.objects.create(experiment=experiment, group="A", repeat=1, status="running")
    client.force_login(users.plain)
    assert client.post(f"/api/runs/{run.pk}/pause/").status_code == 403
    client.force_login(users.reviewer)
    paused = client.post(f"/api/runs/{run.pk}/pause/")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    again = client.post(f"/api/runs/{run.pk}/pause/")
    assert again.status_code == 409 and "cannot go to paused" in again.json()["error"]
    assert client.post(f"/api/runs/{run.pk}/cancel/").json()["status"] == "cancelled"
    junk = post_json(client, f"/api/runs/{run.pk}/resume/", {"force": True})
    assert junk.status_code == 400 and "unknown field" in junk.json()["error"]


def test_paper_import_through_the_api(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    a1 = json.loads((FIXTURES / "A1.json").read_text())
    c1_text = (FIXTURES / "C1.json").read_text()
    response = post_json(client, "/api/paper-import/", {"files": [{"name": "A1.json", "content": a1},
                                                                   {"name": "C1.json", "content": c1_text}]})
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["experiment"]["is_reference"] is True
    assert {r["group"]: r["best_val_bpb"] for r in data["runs"]} == {"A": 1.096392, "C": 1.047687}
    run = Run.objects.get(experiment_id=data["experiment"]["id"], group="A")
    refused = client.post(f"/api/runs/{run.pk}/pause/")
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]


@pytest.mark.parametrize(("payload", "message"), [
    ({"files": []}, "files: List should have at least 1 item"),
    ({"files": [{"name": "a.json", "content": 5}]}, "files.0.content"),
    ({"files": [{"name": "a.json", "content": "{"}]}, "not valid JSON"),
    ({"files": [{"name": "a.json", "content": {"group": "Q"}}]}, "missing key"),
    ({"files": ["x"]}, "files.0: Input should be a valid dictionary"),
    ({"files": [{"name": "a.json", "content": {}, "extra": 1}]}, "unknown field"),
    ({"files": [{"name": "a.json", "content": {}}], "mode": "merge"}, "unknown field"),
])
def test_paper_import_malformed(client: Client, users: Any, payload: Any, message: str) -> None:
    client.force_login(users.plain)
    response = post_json(client, "/api/paper-import/", payload)
    assert response.status_code == 400 and message in response.json()["error"]
    assert Experiment.objects.count() == 0
