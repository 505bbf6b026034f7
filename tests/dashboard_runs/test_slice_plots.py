"""The slice plots' data: one panel per varying parameter (numeric or categorical), constants named
and left out, only iterations with a val_bpb, the baseline only for a single run."""

from __future__ import annotations

from typing import Any

import pytest

from runs.analysis.parallel_coordinates import measured_iterations
from runs.analysis.slice_plots import slice_plots
from runs.models import Iteration

from .conftest import make_experiment, make_iteration, make_run

pytestmark = pytest.mark.django_db


def test_varying_parameters_are_panels_by_kind_and_constants_are_named(users: Any) -> None:
    experiment = make_experiment(users.plain, groups=["A", "C"])
    run_a = make_run(experiment, "A", baseline_val_bpb=2.7)
    run_c = make_run(experiment, "C", baseline_val_bpb=2.72)
    base = {"ASPECT": 64, "WINDOW_PATTERN": "SSSL", "TIED": False, "BETAS": [0.8, 0.95]}
    make_iteration(run_a, 0, val_bpb=2.7, config={**base, "DEPTH": 4, "MATRIX_LR": 0.001})
    make_iteration(run_a, 1, status="keep", val_bpb=2.6,
                   config={**base, "DEPTH": 6, "MATRIX_LR": 0.2, "WINDOW_PATTERN": "L", "TIED": True})
    make_iteration(run_a, 2, status="crash", val_bpb=None,
                   config={**base, "DEPTH": 99, "MATRIX_LR": 9.0, "BETAS": [0.9, 0.99], "ASPECT": 1})
    make_iteration(run_c, 0, val_bpb=2.72, config={**base, "DEPTH": 4.0, "MATRIX_LR": 0.001})

    data = slice_plots(measured_iterations(Iteration.objects.filter(run__experiment=experiment)), ["A", "C"])

    params = {p["name"]: p for p in data["params"]}
    assert list(params) == ["DEPTH", "MATRIX_LR", "TIED", "WINDOW_PATTERN"]  # sorted, varying only
    assert params["DEPTH"] == {"name": "DEPTH", "kind": "numeric", "log": False}
    assert params["MATRIX_LR"] == {"name": "MATRIX_LR", "kind": "numeric", "log": True}  # 0.001 .. 0.2: 200×
    assert params["TIED"] == {"name": "TIED", "kind": "categorical", "categories": ["false", "true"]}
    assert params["WINDOW_PATTERN"]["categories"] == ["L", "SSSL"]
    # BETAS and ASPECT differ only in the crash, which has no val_bpb: constant among the points.
    assert data["constant"] == [{"name": "ASPECT", "value": "64"}, {"name": "BETAS", "value": "[0.8, 0.95]"}]
    assert data["shown"] == data["total"] == 3
    assert sorted((p["group"], p["index"]) for p in data["points"]) == [("A", 0), ("A", 1), ("C", 0)]
    kept = next(p for p in data["points"] if p["status"] == "keep")
    assert kept["x"] == [6.0, 0.2, "true", "L"] and kept["val_bpb"] == 2.6
    assert data["baseline"] is None  # two runs, two baselines
    assert [g["group"] for g in data["groups"]] == ["A", "C"]
    assert data["groups"][1]["label"] == "C: Level 1 + 1.5 + 2"
    assert data["groups"][0]["colour"] != data["groups"][1]["colour"]


def test_a_single_run_has_its_baseline_and_mixed_types_are_categorical(users: Any) -> None:
    run = make_run(make_experiment(users.plain), "B", baseline_val_bpb=2.7)
    make_iteration(run, 0, val_bpb=2.7, config={"X": 4, "Y": 1})
    make_iteration(run, 1, val_bpb=2.65, config={"X": "auto", "Y": 1})
    make_iteration(run, 2, val_bpb=2.66, config={"X": 4.0})  # Y missing: no point on its axis, still constant

    data = slice_plots(measured_iterations(run.iteration_set.all()), [run.group])

    assert data["params"] == [{"name": "X", "kind": "categorical", "categories": ["4", "auto"]}]
    assert data["constant"] == [{"name": "Y", "value": "1"}]
    assert data["baseline"] == 2.7
    assert [p["x"] for p in data["points"]] == [["4"], ["auto"], ["4"]]


def test_nothing_measured_gives_no_panel(users: Any) -> None:
    run = make_run(make_experiment(users.plain), "A")
    make_iteration(run, 0, status="crash", val_bpb=None, config={"X": 1})
    data = slice_plots(measured_iterations(run.iteration_set.all()), ["A"])
    assert data["params"] == [] and data["points"] == [] and data["total"] == 0 and data["baseline"] is None
