"""The experiment form and API: real confirmation (on by default for surrogate experiments, refused for real ones,
its cost shown) and the tuned start (the preset's best real-confirmed config as every run's baseline)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from runs.engine.experiment_form import ExperimentForm
from runs.engine.state import RunState
from runs.models import Experiment
from trainer.schema import default_config
from trainer.tuned_start import tuned_start

from .test_experiment_form import valid_data

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runs.engine.control.enqueue_step", lambda run_id: None)


@pytest.mark.parametrize(("objective", "expected"), [("surrogate", 2), ("trainer", 0)])
def test_real_confirmation_defaults_by_objective(objective: str, expected: int) -> None:
    form = ExperimentForm(valid_data(objective=objective))
    assert form.is_valid(), form.errors
    assert form.save_and_start(None).real_confirmation_repeats == expected
    explicit = ExperimentForm(valid_data(name="none", real_confirmation_repeats=0))
    assert explicit.is_valid() and explicit.save_and_start(None).real_confirmation_repeats == 0


def test_real_confirmation_is_refused_for_a_real_trainer_experiment_and_nothing_is_created() -> None:
    form = ExperimentForm(valid_data(objective="trainer", real_confirmation_repeats=2))
    assert not form.is_valid()
    assert "surrogate experiments" in form.errors["real_confirmation_repeats"][0]
    for bad in (-1, 21, "two"):
        assert "real_confirmation_repeats" in ExperimentForm(valid_data(real_confirmation_repeats=bad)).errors
    assert not Experiment.objects.exists()


def test_the_form_page_states_the_cost_and_the_tuned_starts(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    page = client.get("/experiments/new/").content.decode()
    assert 'id="real-confirmation-cost"' in page and 'data-seconds-per-training="60.0"' in page
    assert "about 1 minute on cpu-tiny" in page and "2r real trainings per run" in page
    start = tuned_start("cpu-tiny")
    assert start is not None
    assert 'name="start" value="tuned"' in page and f"{start.mean_real_val_bpb:.4f}" in page


def test_a_tuned_start_is_every_runs_baseline_with_its_provenance(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    response = client.post("/experiments/new/", valid_data(start="tuned"))
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    start = tuned_start("cpu-tiny")
    assert start is not None
    assert experiment.tuned_start["seeds"] == list(start.seeds) and experiment.tuned_start["source"] == start.source
    for run in experiment.runs.all():
        assert RunState.load(run).base_config == start.config != default_config()
    detail = client.get(f"/experiments/{experiment.pk}/").content.decode()
    assert "tuned start" in detail and f"{start.mean_real_val_bpb:.4f}" in detail
    # A clone offers the tuned start again.
    clone = client.get(f"/experiments/{experiment.pk}/clone/").content.decode()
    assert re.search(r'<input type="radio" name="start" value="tuned"[^>]* checked>', clone)


def test_the_default_start_and_a_preset_without_a_tuned_start() -> None:
    default = ExperimentForm(valid_data())
    assert default.is_valid() and default.save_and_start(None).tuned_start == {}
    gpu = ExperimentForm(valid_data(name="gpu", preset="gpu", budget_value=1e17, start="tuned"))
    assert not gpu.is_valid() and "No tuned start is known for the gpu preset" in gpu.errors["start"][0]
    assert ExperimentForm(valid_data(start="best")).errors["start"]


def test_the_api_takes_both_options_and_returns_them(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    created = client.post("/api/experiments/", {"name": "api", "groups": ["A"], "objective": "surrogate",
                                                 "start": "tuned", "real_confirmation_repeats": 3},
                          content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["real_confirmation_repeats"] == 3 and body["tuned_start"]["preset"] == "cpu-tiny"
    default = client.post("/api/experiments/", {"name": "api2", "groups": ["A"], "objective": "surrogate"},
                          content_type="application/json").json()
    assert default["real_confirmation_repeats"] == 2 and default["tuned_start"] is None
    refused = client.post("/api/experiments/", {"name": "api3", "groups": ["A"], "objective": "trainer",
                                                "real_confirmation_repeats": 1}, content_type="application/json")
    assert refused.status_code == 400 and "real_confirmation_repeats" in refused.json()["fields"]
