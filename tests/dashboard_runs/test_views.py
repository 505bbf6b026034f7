"""Permissions, pages, iteration filters/sort/pagination, exports and run controls (Django test client)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from mechanisms.models import Mechanism, MechanismAttachment
from runs.models import Run

from .conftest import make_experiment, make_iteration, make_run

pytestmark = pytest.mark.django_db


def body(response: Any) -> str:
    return (b"".join(response.streaming_content) if response.streaming else response.content).decode()


def csv_rows(response: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body(response))))


def urls(data: dict[str, Any]) -> list[str]:
    experiment, run = data["experiment"].pk, data["run_a"].pk
    return [
        "/",
        "/experiments/new/",
        f"/experiments/{experiment}/",
        f"/experiments/{experiment}/iterations/",
        f"/experiments/{experiment}/iterations/?format=csv",
        f"/runs/{run}/",
        f"/runs/{run}/iterations/",
        f"/runs/{run}/iterations/?format=json",
    ]


def test_anonymous_is_sent_to_login_everywhere(client: Client, populated: dict[str, Any]) -> None:
    for url in urls(populated):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/"), url
    run = populated["run_a"].pk
    for action in ("pause", "resume", "cancel"):
        assert client.post(f"/runs/{run}/{action}/")["Location"].startswith("/accounts/login/")
    assert client.post("/experiments/new/", {"name": "x"})["Location"].startswith("/accounts/login/")


def test_anonymous_json_snapshot_is_403_json(client: Client, populated: dict[str, Any]) -> None:
    response = client.get(f"/runs/{populated['run_a'].pk}/snapshot.json")
    assert response.status_code == 403
    assert response.json() == {"error": "authentication required"}


def test_plain_user_can_view_every_page(client: Client, users: Any, populated: dict[str, Any]) -> None:
    client.force_login(users.reviewer)  # not the creator, no special rights for runs
    for url in urls(populated):
        assert client.get(url).status_code == 200, url
    assert client.get(f"/runs/{populated['run_a'].pk}/snapshot.json").status_code == 200


def test_missing_objects_are_404(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    for url in ("/experiments/999/", "/experiments/999/iterations/", "/runs/999/", "/runs/999/iterations/",
                "/runs/999/snapshot.json"):
        assert client.get(url).status_code == 404, url
    assert client.post("/runs/999/pause/").status_code == 404


def test_home_summarises_experiments(client: Client, users: Any, populated: dict[str, Any]) -> None:
    make_experiment(users.plain, name="surrogate one", objective="surrogate", groups=["R"])
    make_experiment(users.plain, name="llm one", agent_backend="llm", llm_model="deepseek-chat",
                    llm_base_url="https://api.deepseek.com/v1", llm_api_key="sk-hidden")
    client.force_login(users.plain)
    content = client.get("/").content.decode()
    assert "populated" in content and "2.6000" in content  # best over the runs
    assert "2 queued" in content
    assert "built-in heuristic (no LLM)" in content
    assert "Surrogate" in content
    assert "LLM: deepseek-chat at https://api.deepseek.com/v1" in content
    assert "sk-hidden" not in content
    assert f'href="/experiments/{populated["experiment"].pk}/"' in content


def test_experiment_page_lists_runs_and_links(client: Client, users: Any, populated: dict[str, Any]) -> None:
    client.force_login(users.plain)
    experiment = populated["experiment"]
    content = client.get(f"/experiments/{experiment.pk}/").content.decode()
    assert f'href="/runs/{populated["run_a"].pk}/"' in content
    assert f'href="/experiments/{experiment.pk}/compare/"' in content
    assert "-0.1000" in content  # best − baseline of run A
    assert "4/6" in content


def test_experiment_runs_partial_stops_polling_when_nothing_can_change(
    client: Client, users: Any, populated: dict[str, Any]
) -> None:
    client.force_login(users.plain)
    url = f"/experiments/{populated['experiment'].pk}/"
    headers = {"HX-Request": "true", "HX-Target": "experiment-runs"}
    assert client.get(url, headers=headers).status_code == 200
    Run.objects.update(status="completed")
    response = client.get(url, headers=headers)
    assert response.status_code == 286
    assert "<html" not in response.content.decode()


def test_run_page_shows_header_and_escapes_stored_text(client: Client, users: Any, populated: dict[str, Any]) -> None:
    run = populated["run_a"]
    payload = "<img src=x onerror=alert(1)>"
    make_iteration(run, 5, hypothesis=payload, status="discard")
    client.force_login(users.plain)
    content = client.get(f"/runs/{run.pk}/").content.decode()
    assert "built-in heuristic (no LLM)" in content
    assert "strict (paper)" in content
    assert "A: Level 1" in content
    assert payload not in content
    assert "&lt;img src=x onerror=alert(1)&gt;" in content  # the table cell
    assert "\\u003Cimg src=x onerror=alert(1)\\u003E" in content  # the JSON snapshot for the script


def test_snapshot_has_everything_the_live_page_draws(client: Client, users: Any, populated: dict[str, Any]) -> None:
    run = populated["run_a"]
    Run.objects.filter(pk=run.pk).update(live_progress={"iteration": 5, "points": [[1, 5.5], [2, 5.0]], "step": 2})
    mechanism = Mechanism.objects.create(code_hash="h1", name="tabu", code="", origin="builtin-catalogue")
    attachment = MechanismAttachment.objects.create(run=run, mechanism=mechanism, status="active",
                                                    hook_calls={"filter": 4}, decisions_changed=0)
    run.outer_cycles.create(index=1, after_iteration=5, frozen=["DEPTH"], newly_frozen=["DEPTH"],
                            guidance="<b>try LRs</b>", reasons={"DEPTH": "3 tries, no gain"})
    client.force_login(users.plain)
    snapshot = client.get(f"/runs/{run.pk}/snapshot.json").json()
    assert snapshot["run"]["id"] == run.pk and snapshot["run"]["iterations_planned"] == 6
    assert [it["index"] for it in snapshot["iterations"]] == [0, 1, 2, 3, 4]
    assert snapshot["outer_cycles"][0]["guidance"] == "<b>try LRs</b>"
    assert snapshot["attachments"] == [{
        "id": attachment.pk, "name": "tabu", "origin": "builtin-catalogue", "status": "active",
        "status_display": "Active", "status_detail": "", "hook_calls": {"filter": 4}, "total_calls": 4,
        "decisions_changed": 0, "inert": True, "activated_at_iteration": None, "deactivated_at_iteration": None,
        "review_url": f"/mechanisms/{attachment.pk}/",
    }]
    assert snapshot["live_progress"]["points"] == [[1, 5.5], [2, 5.0]]
    assert snapshot["research_sessions"] == []


# --- iteration tables ------------------------------------------------------------------------


def table_indices(client: Client, url: str) -> list[tuple[int, int]]:
    response = client.get(url, headers={"HX-Request": "true", "HX-Target": "iteration-table"})
    assert response.status_code == 200
    assert "<html" not in response.content.decode()  # a partial
    return [(it.run_id, it.index) for it in response.context["page_obj"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [("A", 0), ("A", 1), ("A", 2), ("A", 3), ("A", 4), ("B", 0), ("B", 1), ("B", 2)]),
        ("status=keep", [("A", 1), ("A", 4)]),
        ("status=keep&status=crash", [("A", 1), ("A", 3), ("A", 4)]),
        ("kind=reevaluation", [("B", 2)]),
        ("group=B", [("B", 0), ("B", 1), ("B", 2)]),
        ("param=DEPTH", [("A", 2), ("B", 1)]),
        ("param=MATRIX_LR&status=keep", [("A", 1)]),
        ("q=LR", [("A", 1), ("A", 3)]),
        ("min_bpb=2.66&max_bpb=2.71", [("A", 0), ("A", 2), ("B", 0)]),
        ("sort=val_bpb", [("A", 4), ("A", 1), ("A", 2), ("A", 0), ("B", 0), ("B", 2), ("B", 1), ("A", 3)]),
        ("sort=-val_bpb", [("B", 1), ("B", 2), ("B", 0), ("A", 0), ("A", 2), ("A", 1), ("A", 4), ("A", 3)]),
        ("sort=delta&status=keep&status=discard", [("A", 1), ("A", 4), ("B", 2), ("A", 2), ("B", 1)]),
        ("sort=-seconds&group=A", [("A", 2), ("A", 4), ("A", 3), ("A", 1), ("A", 0)]),
        ("sort=-index&group=A", [("A", 4), ("A", 3), ("A", 2), ("A", 1), ("A", 0)]),
    ],
)
def test_experiment_table_filters_and_sorts(
    client: Client, users: Any, populated: dict[str, Any], query: str, expected: list[tuple[str, int]]
) -> None:
    client.force_login(users.plain)
    run_ids = {"A": populated["run_a"].pk, "B": populated["run_b"].pk}
    url = f"/experiments/{populated['experiment'].pk}/iterations/?{query}"
    assert table_indices(client, url) == [(run_ids[g], i) for g, i in expected]


def test_export_holds_exactly_the_filtered_rows_in_order(client: Client, users: Any, populated: dict[str, Any]) -> None:
    client.force_login(users.plain)
    base = f"/experiments/{populated['experiment'].pk}/iterations/"
    for query in ("", "status=keep&status=crash", "param=DEPTH&sort=-val_bpb", "q=LR", "group=B&sort=delta",
                  "min_bpb=2.66&per_page=25&page=1"):
        shown = table_indices(client, f"{base}?{query}")
        as_csv = client.get(f"{base}?{query}&format=csv")
        assert as_csv["Content-Type"] == "text/csv; charset=utf-8"
        assert as_csv["Content-Disposition"] == (
            f'attachment; filename="experiment-{populated["experiment"].pk}-iterations.csv"')
        assert [(int(r["run"]), int(r["index"])) for r in csv_rows(as_csv)] == shown, query
        as_json = client.get(f"{base}?{query}&format=json")
        assert as_json["Content-Type"] == "application/json"
        assert [(r["run"], r["index"]) for r in json.loads(body(as_json))] == shown, query


def test_export_values_and_spreadsheet_safety(client: Client, users: Any, populated: dict[str, Any]) -> None:
    run_b = populated["run_b"]
    make_iteration(run_b, 3, hypothesis="=HYPERLINK(\"http://evil\")", status="discard")
    client.force_login(users.plain)
    rows = csv_rows(client.get(f"/runs/{populated['run_a'].pk}/iterations/?format=csv&status=keep"))
    first = rows[0]
    assert first["changes"] == "MATRIX_LR: 0.04 → 0.08"
    assert first["hypothesis"] == "double the matrix LR"
    assert float(first["val_bpb"]) == 2.65 and float(first["delta_vs_best_before"]) == pytest.approx(-0.05)
    assert first["mechanisms"] == "tabu" and first["proposal_source"] == "agent"
    evil = csv_rows(client.get(f"/runs/{run_b.pk}/iterations/?format=csv&q=HYPERLINK"))
    assert evil[0]["hypothesis"].startswith("'=")


def test_export_rejects_bad_format_and_invalid_filters(client: Client, users: Any, populated: dict[str, Any]) -> None:
    client.force_login(users.plain)
    base = f"/runs/{populated['run_a'].pk}/iterations/"
    assert client.get(f"{base}?format=xlsx").status_code == 400
    assert client.get(f"{base}?format=csv&status=bogus").status_code == 400
    assert client.get(f"{base}?format=csv&min_bpb=3&max_bpb=2").status_code == 400


def test_invalid_filters_on_a_page_are_reported_not_fatal(
    client: Client, users: Any, populated: dict[str, Any]
) -> None:
    client.force_login(users.plain)
    response = client.get(f"/runs/{populated['run_a'].pk}/iterations/?min_bpb=abc&sort=nope")
    assert response.status_code == 200
    assert "Some filters are invalid" in response.content.decode()


def test_pagination_and_linkable_urls(client: Client, users: Any) -> None:
    experiment = make_experiment(users.plain)
    run = make_run(experiment)
    for index in range(60):
        make_iteration(run, index, val_bpb=3.0 - index / 100)
    client.force_login(users.plain)
    url = f"/runs/{run.pk}/iterations/"
    assert table_indices(client, url) == [(run.pk, i) for i in range(50)]
    assert table_indices(client, url + "?page=2") == [(run.pk, i) for i in range(50, 60)]
    assert table_indices(client, url + "?per_page=25&page=3") == [(run.pk, i) for i in range(50, 60)]
    assert table_indices(client, url + "?page=99") == [(run.pk, i) for i in range(50, 60)]  # clamps
    content = client.get(url + "?status=discard&per_page=25").content.decode()
    assert 'href="?status=discard&amp;per_page=25&amp;page=2"' in content  # links keep the filter
    assert "format=csv" in content and "status=discard&amp;per_page=25&amp;format=csv" in content
    # The whole filter goes into the export, not just a page.
    assert len(csv_rows(client.get(url + "?per_page=25&page=2&format=csv"))) == 60


def test_export_run_command_uses_the_same_export(tmp_path: Any, populated: dict[str, Any], users: Any) -> None:
    run = populated["run_a"]
    out = io.StringIO()
    call_command("export_run", str(run.pk), "--format", "json", stdout=out)
    assert [r["index"] for r in json.loads(out.getvalue())] == [0, 1, 2, 3, 4]
    target = tmp_path / "run.csv"
    call_command("export_run", str(run.pk), "--format", "csv", "--output", str(target), stderr=io.StringIO())
    client = Client()
    client.force_login(users.plain)
    assert target.read_bytes().decode() == body(client.get(f"/runs/{run.pk}/iterations/?format=csv"))


# --- run controls ----------------------------------------------------------------------------


def test_controls_need_csrf(users: Any, populated: dict[str, Any]) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(users.plain)
    run = populated["run_a"]
    assert client.post(f"/runs/{run.pk}/pause/").status_code == 403
    assert client.post("/experiments/new/", {"name": "x"}).status_code == 403
    run.refresh_from_db()
    assert run.status == "queued"
    page = client.get(f"/runs/{run.pk}/")
    token = page.cookies["csrftoken"].value
    response = client.post(f"/runs/{run.pk}/pause/", headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == "paused"


def test_only_creator_or_staff_control_runs(client: Client, users: Any, populated: dict[str, Any]) -> None:
    run = populated["run_a"]  # created by users.plain
    client.force_login(users.reviewer)
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 403
    assert "Only the experiment's creator" in client.get(f"/runs/{run.pk}/").content.decode()
    run.refresh_from_db()
    assert run.status == "queued"
    client.force_login(users.admin)
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 302
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_pause_resume_cancel_and_transition_errors(
    client: Client, users: Any, populated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runs.engine.control.enqueue_step", lambda run_id: None)
    run = populated["run_a"]
    client.force_login(users.plain)
    hx = {"HX-Request": "true", "HX-Target": "run-controls"}
    response = client.post(f"/runs/{run.pk}/resume/", headers=hx)
    assert "is queued; cannot go to queued" in response.content.decode()  # TransitionError text
    assert 'data-status="queued"' in response.content.decode()
    assert 'data-status="paused"' in client.post(f"/runs/{run.pk}/pause/", headers=hx).content.decode()
    assert 'data-status="queued"' in client.post(f"/runs/{run.pk}/resume/", headers=hx).content.decode()
    response = client.post(f"/runs/{run.pk}/cancel/", follow=True)  # without htmx: redirect + message
    assert response.redirect_chain[-1][0] == f"/runs/{run.pk}/"
    assert "cancel done" in response.content.decode()
    response = client.post(f"/runs/{run.pk}/pause/", follow=True)
    assert "is cancelled; cannot go to paused" in response.content.decode()
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_controls_reject_get(client: Client, users: Any, populated: dict[str, Any]) -> None:
    client.force_login(users.plain)
    assert client.get(f"/runs/{populated['run_a'].pk}/pause/").status_code == 405


def test_table_queries_do_not_grow_with_rows(client: Client, users: Any, django_assert_max_num_queries: Any) -> None:
    experiment = make_experiment(users.plain, objective="surrogate")
    run = make_run(experiment)
    for index in range(40):
        make_iteration(run, index, simulated_seconds=48.0, mechanism_effects=[{"mechanism": "tabu"}])
    client.force_login(users.plain)
    with django_assert_max_num_queries(12):
        content = client.get(f"/experiments/{experiment.pk}/iterations/").content.decode()
    assert content.count("sim. 48.0 s") == 40
    rows = csv_rows(client.get(f"/runs/{run.pk}/iterations/?format=csv"))
    assert {r["simulated_seconds"] for r in rows} == {"48.0"}
