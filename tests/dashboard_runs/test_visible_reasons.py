"""Why a row is invalid or failed is readable where it appears: the run page's iteration table, the run's
Level 2 sessions, the comparison's counts; and the server's LLM defaults apply to the form and the API."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

import pytest
from django.test import Client, override_settings

from mechanisms.models import ResearchSession, SessionStatus
from runs.models import Experiment

from .conftest import make_experiment, make_iteration, make_run
from .test_experiment_form import valid_data

pytestmark = pytest.mark.django_db

REASON = "WARMUP_RATIO must be a number, got [0.1, 0.2]"


@pytest.fixture
def invalid_run(users: Any) -> Any:
    experiment = make_experiment(users.plain, groups=["A", "C"], iterations=2, strategy_interval=1)
    run = make_run(experiment, "A", baseline_val_bpb=2.7, best_val_bpb=2.7, proposals_done=2)
    make_iteration(run, 0)
    make_iteration(run, 1, status="invalid_proposal", val_bpb=None, changes={},
                   error=f"no valid proposal after 4 attempts; last: {REASON}",
                   rejected_attempts=[{"attempt": 1, "source": "agent", "reason": "the reply contains no JSON object"},
                                      {"attempt": 2, "source": "agent", "changes": {"WARMUP_RATIO": [0.1, 0.2]},
                                       "reason": REASON}])
    make_iteration(run, 2, status="discard", val_bpb=2.71, changes={"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}})
    other = make_run(experiment, "C", baseline_val_bpb=2.7, best_val_bpb=2.7, proposals_done=2)
    make_iteration(other, 0)
    make_iteration(other, 1, status="discard", val_bpb=2.72, changes={"WEIGHT_DECAY": {"old": 0.0, "new": 0.2}})
    make_iteration(other, 2, status="discard", val_bpb=2.73, changes={"WEIGHT_DECAY": {"old": 0.0, "new": 0.3}})
    return run


def test_an_invalid_proposal_row_shows_its_reason_and_what_was_refused(
    client: Client, users: Any, invalid_run: Any
) -> None:
    client.force_login(users.plain)
    html = client.get(f"/runs/{invalid_run.pk}/").content.decode()
    assert escape(f"no valid proposal after 4 attempts; last: {REASON}") in html  # the Failure column
    assert "2 refused attempts" in html and "the reply contains no JSON object" in html
    assert escape('refused: {"WARMUP_RATIO": [0.1, 0.2]}') in html  # the Changes column is not empty


def test_the_comparison_counts_invalid_proposals_per_group(client: Client, users: Any, invalid_run: Any) -> None:
    client.force_login(users.plain)
    html = client.get(f"/experiments/{invalid_run.experiment_id}/compare/").content.decode()
    cells = [f'<td class="num" data-field="invalid">{n}</td>' for n in (1, 0)]  # group A, group C
    assert all(cell in html for cell in cells)
    assert "1 were invalid proposals, refused before training" in html and "imported reference" not in html


def test_a_failed_level2_sessions_rounds_are_in_the_run_snapshot(client: Client, users: Any, invalid_run: Any) -> None:
    rounds = [{"round": "explore", "attempt": 0, "prompt": "p" * 50_000, "reply": '{"diagnosis": "the template"}',
               "parsed": None, "error": "'candidates' must be a list of 3 or 4 mechanisms", "seconds": 300.0}]
    ResearchSession.objects.create(run=invalid_run, outer_cycle_index=1, backend="llm", status=SessionStatus.FAILED,
                                   status_detail="explore failed", artifacts={"rounds": rounds})
    client.force_login(users.plain)
    snapshot = client.get(f"/runs/{invalid_run.pk}/snapshot.json").json()
    [session] = snapshot["research_sessions"]
    assert session["rounds"] == [{"round": "explore", "attempt": 0, "error": rounds[0]["error"],
                                  "reply": rounds[0]["reply"], "seconds": 300.0}]  # no 50 KB prompt


@override_settings(LLM_BASE_URL="http://127.0.0.1:8080/v1", LLM_MODEL="qwen2.5-coder-1.5b-instruct",
                   DEFAULT_AGENT_BACKEND="llm")
def test_the_servers_llm_defaults_apply_to_the_form_and_the_api(client: Client, users: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runs.engine.control.enqueue_step", lambda run_id: None)
    client.force_login(users.plain)
    page = client.get("/experiments/new/").content.decode()
    assert 'placeholder="http://127.0.0.1:8080/v1"' in page and "qwen2.5-coder-1.5b-instruct" in page
    assert re.search(r'<input type="radio" name="agent_backend" value="llm"[^>]* checked', page)  # up --local-llm
    assert client.post("/experiments/new/", valid_data(agent_backend="llm")).status_code == 302
    payload = {k: v for k, v in valid_data(agent_backend="llm", name="api").items() if k != "review_gate"}
    response = client.post("/api/experiments/", json.dumps(payload), content_type="application/json")
    assert response.status_code == 201, response.content
    assert (response.json()["llm_base_url"], response.json()["llm_model"]) == (
        "http://127.0.0.1:8080/v1", "qwen2.5-coder-1.5b-instruct")
    stored = set(Experiment.objects.values_list("llm_base_url", "llm_model"))
    assert stored == {("http://127.0.0.1:8080/v1", "qwen2.5-coder-1.5b-instruct")}


@override_settings(LLM_BASE_URL="", LLM_MODEL="")
def test_without_server_defaults_an_llm_experiment_needs_url_and_model(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    response = client.post("/experiments/new/", valid_data(agent_backend="llm"))
    assert response.status_code == 200 and b"the server sets none" in response.content
    assert not Experiment.objects.exists()
