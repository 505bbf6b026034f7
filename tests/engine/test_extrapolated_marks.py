"""A surrogate summary that says its config lies outside the measured support marks the iteration "extrapolated"
in the table, the exports, the API and the run page's data; a summary that says nothing marks nothing."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pytest
from django.test import Client

from runs.engine.recording import support_fields
from runs.models import Iteration, IterationKind
from trainer.outcomes import TrainingSummary
from trainer.schema import config_to_json, default_config

from .helpers import drive, make_experiment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_client")]


@pytest.fixture
def surrogate_with_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped surrogate, plus the support fields the refitted one reports: the default config (the baseline)
    inside the support, every other config outside it at a distance that grows with MATRIX_LR's change."""
    import trainer.surrogate

    real = trainer.surrogate.surrogate_evaluate
    default = config_to_json(default_config())

    def with_support(config: dict[str, Any], **kwargs: Any) -> TrainingSummary:
        summary = real(config, **kwargs)
        outside = config_to_json(config) != default
        summary.extra.update(extrapolated=outside, support_distance=2.5 if outside else 0.0,
                             nearest_measured_val_bpb=3.0859)
        return summary

    monkeypatch.setattr(trainer.surrogate, "surrogate_evaluate", with_support)


def download(client: Client, url: str) -> str:
    response: Any = client.get(url)
    return b"".join(response.streaming_content).decode()


def test_extrapolated_iterations_are_marked_everywhere(
    surrogate_with_support: None, client: Client, users: Any
) -> None:
    experiment = make_experiment(iterations=3, confirmation_repeats=0)
    run = experiment.runs.get()
    drive(run)
    rows = list(run.iteration_set.order_by("index"))
    baseline, proposals = rows[0], [r for r in rows if r.kind == IterationKind.PROPOSAL and r.config]
    assert not baseline.extrapolated and baseline.support_distance == 0.0
    assert proposals and all(r.extrapolated and r.support_distance == 2.5 for r in proposals)
    assert all(r.nearest_measured_val_bpb == 3.0859 for r in proposals)
    marked = {r.index for r in rows if r.extrapolated}

    client.force_login(users.plain)
    table = client.get(f"/runs/{run.pk}/iterations/").content.decode()
    assert table.count('class="tag extrapolated"') == len(marked)
    assert "they gave 3.0859" in table
    exported = list(csv.DictReader(io.StringIO(download(client, f"/runs/{run.pk}/iterations/?format=csv"))))
    assert {int(r["index"]) for r in exported if r["extrapolated"] == "yes"} == marked
    assert {r["extrapolated"] for r in exported if int(r["index"]) not in marked} == {"no"}
    assert all(float(r["support_distance"]) == 2.5 for r in exported if r["extrapolated"] == "yes")
    records = json.loads(download(client, f"/runs/{run.pk}/iterations/?format=json"))
    assert {r["index"] for r in records if r["extrapolated"]} == marked
    api = client.get(f"/api/iterations/?run={run.pk}").json()["results"]
    assert {r["index"] for r in api if r["extrapolated"]} == marked
    assert all(r["nearest_measured_val_bpb"] == 3.0859 for r in api if r["extrapolated"])
    snapshot = client.get(f"/runs/{run.pk}/snapshot.json").json()  # what the run page's chart draws
    assert {it["index"] for it in snapshot["iterations"] if it["extrapolated"]} == marked


def test_the_shipped_surrogates_own_marks_are_recorded() -> None:
    """The refitted surrogate reports the fields itself: each iteration carries what it said for that config."""
    from trainer.surrogate import surrogate_evaluate

    experiment = make_experiment(iterations=4, confirmation_repeats=0)
    run = experiment.runs.get()
    drive(run)
    trained = [it for it in run.iteration_set.order_by("index") if it.config and not it.failure_class]
    assert trained
    for it in trained:
        extra = surrogate_evaluate(it.config, budget_kind="flops", budget_value=experiment.budget_value,
                                   seed=run.seed).extra
        assert (it.extrapolated, it.support_distance, it.nearest_measured_val_bpb) == (
            extra["extrapolated"], extra["support_distance"], extra["nearest_measured_val_bpb"])


def test_a_summary_without_the_fields_marks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.surrogate

    real = trainer.surrogate.surrogate_evaluate

    def silent(config: dict[str, Any], **kwargs: Any) -> TrainingSummary:
        summary = real(config, **kwargs)
        for key in ("extrapolated", "support_distance", "nearest_measured_val_bpb"):
            summary.extra.pop(key, None)
        return summary

    monkeypatch.setattr(trainer.surrogate, "surrogate_evaluate", silent)
    experiment = make_experiment(iterations=2, confirmation_repeats=0)
    drive(experiment.runs.get())
    assert Iteration.objects.exists()
    assert not Iteration.objects.filter(extrapolated=True).exists()
    assert not Iteration.objects.filter(support_distance__isnull=False).exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, (False, None, None)),
        ({"extrapolated": True, "support_distance": 1.5, "nearest_measured_val_bpb": 2.8}, (True, 1.5, 2.8)),
        ({"extrapolated": "yes", "support_distance": math.nan, "nearest_measured_val_bpb": "2.8"}, (False, None, None)),
        ({"extrapolated": 1, "support_distance": True, "nearest_measured_val_bpb": math.inf}, (False, None, None)),
    ],
)
def test_only_well_typed_support_fields_are_kept(extra: dict[str, Any], expected: tuple[Any, ...]) -> None:
    fields = support_fields(TrainingSummary(failure_class="ok", val_bpb=3.0, extra=extra))
    assert (fields["extrapolated"], fields["support_distance"], fields["nearest_measured_val_bpb"]) == expected
    assert support_fields(None)["extrapolated"] is False
