"""The experiment form: every invalid input gives a field error and creates nothing; valid input
creates the experiment, groups × repeats runs with paired seeds, and queues their first steps."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from runs.engine.experiment_form import ExperimentForm
from runs.models import Experiment, Run

pytestmark = pytest.mark.django_db


def valid_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "ablation",
        "description": "A vs B",
        "groups": ["A", "B"],
        "repeats": 2,
        "iterations": 10,
        "strategy_interval": 5,
        "research_interval": 1,
        "objective": "surrogate",
        "preset": "cpu-tiny",
        "budget_kind": "flops",
        "budget_value": 1.5e12,
        "seed_base": 100,
        "threads": 2,
        "agent_backend": "builtin",
        "llm_base_url": "",
        "llm_model": "",
        "llm_api_key": "",
        "acceptance_policy": "strict",
        "noise_k": 2.0,
        "baseline_repeats": 3,
        "review_gate": "on",
    }
    data.update(overrides)
    return data


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the steps start_experiment queues instead of sending tasks (no worker here)."""
    calls: list[int] = []
    monkeypatch.setattr("runs.engine.control.enqueue_step", calls.append)
    return calls


def test_valid_post_creates_experiment_runs_and_queues_them(client: Client, users: Any, enqueued: list[int]) -> None:
    client.force_login(users.plain)
    response = client.post("/experiments/new/", valid_data())
    experiment = Experiment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/experiments/{experiment.pk}/"
    assert experiment.created_by == users.plain
    assert experiment.objective == "surrogate"
    runs = list(experiment.runs.order_by("group", "repeat"))
    assert [(r.group, r.repeat, r.seed) for r in runs] == [("A", 1, 101), ("A", 2, 102), ("B", 1, 101), ("B", 2, 102)]
    assert sorted(enqueued) == sorted(r.pk for r in runs)
    assert [r.level_strategy for r in runs] == [False, False, True, True]


def test_start_failure_rolls_back_everything(client: Client, users: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(run_id: int) -> None:
        raise RuntimeError("broker down")

    monkeypatch.setattr("runs.engine.control.enqueue_step", broken)
    form = ExperimentForm(valid_data())
    with pytest.raises(RuntimeError):
        form.save_and_start(users.plain)
    assert Experiment.objects.count() == 0
    assert Run.objects.count() == 0


INVALID = [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"description": "x" * 5001}, "description"),
    ({"groups": []}, "groups"),
    ({"groups": ["Z"]}, "groups"),
    ({"repeats": 0}, "repeats"),
    ({"repeats": 51}, "repeats"),
    ({"iterations": 0}, "iterations"),
    ({"iterations": "ten"}, "iterations"),
    ({"strategy_interval": 0}, "strategy_interval"),
    ({"strategy_interval": 11}, "strategy_interval"),  # K > T
    ({"research_interval": 0}, "research_interval"),
    ({"objective": "oracle"}, "objective"),
    ({"preset": "tpu"}, "preset"),
    ({"budget_kind": "tokens"}, "budget_kind"),
    ({"budget_value": 0}, "budget_value"),
    ({"budget_value": -5}, "budget_value"),
    ({"budget_value": "inf"}, "budget_value"),
    ({"budget_value": 1e30}, "budget_value"),
    ({"budget_kind": "seconds", "budget_value": 1.5e12}, "budget_value"),
    ({"budget_kind": "seconds", "budget_value": 1}, "budget_value"),
    ({"seed_base": -1}, "seed_base"),
    ({"seed_base": 2**40}, "seed_base"),
    ({"threads": 0}, "threads"),
    ({"agent_backend": "llm", "llm_model": "m"}, "llm_base_url"),
    ({"agent_backend": "llm", "llm_base_url": "https://api.example.com/v1"}, "llm_model"),
    ({"agent_backend": "llm", "llm_base_url": "ftp://example.com/", "llm_model": "m"}, "llm_base_url"),
    ({"agent_backend": "llm", "llm_base_url": "javascript:alert(1)", "llm_model": "m"}, "llm_base_url"),
    ({"agent_backend": "llm", "llm_base_url": "https://e.com/" + "a" * 500, "llm_model": "m"}, "llm_base_url"),
    ({"agent_backend": "llm", "llm_base_url": "https://e.com/v1", "llm_model": "m" * 201}, "llm_model"),
    ({"agent_backend": "llm", "llm_base_url": "https://e.com/v1", "llm_model": "m", "llm_api_key": "k" * 501},
     "llm_api_key"),
    ({"agent_backend": "gpt"}, "agent_backend"),
    ({"acceptance_policy": "lenient"}, "acceptance_policy"),
    ({"acceptance_policy": "noise_aware", "noise_k": -1}, "noise_k"),
    ({"acceptance_policy": "noise_aware", "baseline_repeats": 1}, "baseline_repeats"),
]


@pytest.mark.parametrize(("overrides", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_input_gives_a_field_error_and_creates_nothing(
    client: Client, users: Any, enqueued: list[int], overrides: dict[str, Any], field: str
) -> None:
    client.force_login(users.plain)
    response = client.post("/experiments/new/", valid_data(**overrides))
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.errors, form.errors
    assert b"Nothing was created" in response.content
    assert Experiment.objects.count() == 0
    assert Run.objects.count() == 0
    assert enqueued == []


def test_llm_backend_is_stored_and_the_key_is_never_echoed(client: Client, users: Any, enqueued: list[int]) -> None:
    client.force_login(users.plain)
    secret = "sk-very-secret-key-123"
    # An invalid submission (K > T) with a key: the page comes back without the key in it.
    data = valid_data(agent_backend="llm", llm_base_url="http://127.0.0.1:11434/v1", llm_model="llama3",
                      llm_api_key=secret)
    response = client.post("/experiments/new/", {**data, "strategy_interval": 99})
    assert response.status_code == 200
    assert secret.encode() not in response.content
    assert b"write-only" in response.content

    response = client.post("/experiments/new/", data)
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    assert (experiment.agent_backend, experiment.llm_model, experiment.llm_api_key) == ("llm", "llama3", secret)
    run = experiment.runs.order_by("pk").first()
    assert run is not None
    for url in ("/", f"/experiments/{experiment.pk}/", f"/runs/{run.pk}/"):
        page = client.get(url)
        assert secret.encode() not in page.content
        assert b"llama3" in page.content


def test_builtin_backend_drops_llm_settings(client: Client, users: Any, enqueued: list[int]) -> None:
    client.force_login(users.plain)
    client.post("/experiments/new/", valid_data(llm_base_url="https://e.com/v1", llm_model="m", llm_api_key="k"))
    experiment = Experiment.objects.get()
    assert (experiment.llm_base_url, experiment.llm_model, experiment.llm_api_key) == ("", "", "")


def test_form_accepts_api_style_dict_with_booleans(users: Any, enqueued: list[int]) -> None:
    form = ExperimentForm(valid_data(groups=["R", "A"], review_gate=False, acceptance_policy="noise_aware"))
    assert form.is_valid(), form.errors
    experiment = form.save_and_start(users.plain)
    assert experiment.groups == ["A", "R"]  # canonical order
    assert experiment.review_gate is False
    assert experiment.runs.filter(group="R", random_control=True).count() == 2


def test_form_page_lists_groups_presets_and_the_builtin_label(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    content = client.get("/experiments/new/").content.decode()
    for text in ("A: Level 1", "R: random control", "cpu-tiny", "gpu", "built-in heuristic (no LLM)", "Surrogate"):
        assert text in content
    assert 'type="password"' in content


def test_review_timeout_is_stored_with_the_gate_and_dropped_without_it(users: Any, enqueued: list[int]) -> None:
    with_gate = ExperimentForm(valid_data(review_gate=True, review_timeout_minutes=15))
    assert with_gate.is_valid(), with_gate.errors
    assert with_gate.save_and_start(users.plain).review_timeout_minutes == 15
    without_gate = ExperimentForm(valid_data(name="no gate", review_gate=False, review_timeout_minutes=15))
    assert without_gate.is_valid(), without_gate.errors
    assert without_gate.save_and_start(users.plain).review_timeout_minutes is None
    assert "review_timeout_minutes" in ExperimentForm(valid_data(review_timeout_minutes=0)).errors
