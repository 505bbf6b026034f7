"""The comparison page, its JSON/CSV/HTML reports: numbers match the database, few queries, fast."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from typing import Any

import pytest
from django.test import Client

from runs.analysis import stats
from runs.models import Experiment, Run
from tests.stats.factories import make_experiment

pytestmark = pytest.mark.django_db


def _deltas(experiment_id: int, group: str) -> list[float]:
    runs = Run.objects.filter(experiment_id=experiment_id, group=group)
    return [r.best_val_bpb - r.baseline_val_bpb for r in runs]  # type: ignore[operator]


def test_summary_numbers_match_the_database(client: Client, users: Any) -> None:
    experiment = make_experiment()
    client.force_login(users.plain)
    response = client.get(f"/experiments/{experiment.pk}/summary.json")
    assert response.status_code == 200
    data = response.json()
    groups = {g["key"]: g for g in data["groups"]}
    for group in ("A", "C", "R"):
        deltas = _deltas(experiment.pk, group)
        assert groups[group]["n"] == 3
        assert groups[group]["delta"]["mean"] == pytest.approx(statistics.mean(deltas), abs=1e-12)
        assert groups[group]["delta"]["sd"] == pytest.approx(statistics.stdev(deltas), abs=1e-12)
    pair = next(p for p in data["pairs"] if (p["first"], p["second"]) == ("R", "A"))
    welch = stats.welch_t_test(_deltas(experiment.pk, "R"), _deltas(experiment.pk, "A"))
    assert welch is not None
    assert (pair["t"], pair["df"], pair["p_welch"]) == pytest.approx((welch.t, welch.df, welch.p_value))
    assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    assert pair["p_permutation"] == pytest.approx(stats.permutation_p_value(_deltas(experiment.pk, "R"),
                                                                            _deltas(experiment.pk, "A")))
    # Three pairs (A, C, R): Holm multiplies the smallest p by 3.
    smallest = min(data["pairs"], key=lambda p: p["p_welch"])
    assert smallest["p_welch_holm"] == pytest.approx(min(1.0, 3 * smallest["p_welch"]))


def test_compare_page_renders_the_table(client: Client, users: Any) -> None:
    experiment = make_experiment(llm_calls=True)
    client.force_login(users.plain)
    response = client.get(f"/experiments/{experiment.pk}/compare/")
    assert response.status_code == 200
    html = response.content.decode()
    deltas = _deltas(experiment.pk, "C")
    row = re.search(r'<tr data-group="C">(.*?)</tr>', html, re.S)
    assert row is not None
    assert f"{statistics.mean(deltas):+.5f}" in row.group(1)
    assert "negative is better" in html
    assert 'id="compare-data"' in html and "compare.js" in html
    assert "tokens in" in html and ">300<" in html  # 3 runs × 100 tokens in for each group's level 1


def test_budget_excludes_runs_that_have_not_reached_it(client: Client, users: Any) -> None:
    experiment = make_experiment(groups=("A", "R"), iterations=6)
    Run.objects.filter(experiment=experiment, group="A", repeat=3).update(status="running")
    # Drop the last two proposals of A3: it has only reached 4 proposals.
    run = Run.objects.get(experiment=experiment, group="A", repeat=3)
    run.iteration_set.filter(index__gt=4).delete()
    client.force_login(users.plain)
    data = client.get(f"/experiments/{experiment.pk}/summary.json").json()
    a = next(g for g in data["groups"] if g["key"] == "A")
    assert a["n"] == 2 and a["excluded"][0]["proposals"] == 4
    early = client.get(f"/experiments/{experiment.pk}/summary.json?budget=4").json()
    assert next(g for g in early["groups"] if g["key"] == "A")["n"] == 3


def test_csv_and_report(client: Client, users: Any) -> None:
    experiment = make_experiment(groups=("A", "R"))
    client.force_login(users.plain)
    rows = list(csv.DictReader(io.StringIO(client.get(f"/experiments/{experiment.pk}/summary.csv").content.decode())))
    assert len(rows) == 6
    for row in rows:
        run = Run.objects.get(pk=row["run"])
        assert float(row["delta"]) == pytest.approx(run.best_val_bpb - run.baseline_val_bpb)  # type: ignore[operator]
    report = client.get(f"/experiments/{experiment.pk}/report.html").content.decode()
    assert "<svg" in report and "<script" not in report and "<link" not in report
    assert "Table 2 style" in report


def test_the_query_count_for_40_runs_of_30_iterations_is_constant(
    client: Client, users: Any, django_assert_max_num_queries: Any
) -> None:
    experiment = make_experiment(groups=("R", "A", "B", "C", "D"), repeats=8, iterations=30, llm_calls=True)
    client.force_login(users.plain)
    client.get(f"/experiments/{experiment.pk}/compare/")  # warm caches (templates, t quantiles)
    # Its speed is measured by bench/bench_dashboard_scale.py; here, that the work does not grow with the runs.
    # 12, plus 3 for the Level 2 table and 2 for the best value known on the objective (recorded values, tuned
    # starts), constant in the run count
    with django_assert_max_num_queries(17):
        response = client.get(f"/experiments/{experiment.pk}/compare/")
    assert response.status_code == 200
    chart = json.loads(re.search(r'id="compare-data" type="application/json">(.*?)</script>',
                                 response.content.decode(), re.S).group(1))  # type: ignore[union-attr]
    assert len(chart["groups"]) == 5 and len(chart["groups"][0]["runs"][0]["absolute"]) == 31


def _two_groups(a: list[float], b: list[float]) -> Any:
    """An experiment whose A and C runs have exactly these Δ (one kept proposal each)."""
    experiment = make_experiment(groups=("A", "C"), repeats=len(a), iterations=1)
    for group, deltas in (("A", a), ("C", b)):
        for run, delta in zip(Run.objects.filter(experiment=experiment, group=group).order_by("repeat"), deltas,
                              strict=True):
            assert run.baseline_val_bpb is not None
            run.iteration_set.filter(index=1).update(status="keep", val_bpb=run.baseline_val_bpb + delta)
            Run.objects.filter(pk=run.pk).update(best_val_bpb=run.baseline_val_bpb + delta)
    return experiment


def test_the_highlight_follows_the_chosen_test(client: Client, users: Any) -> None:
    # Three runs each, far apart and tight: Welch p ≈ 0.0002, but no permutation test of 3 against 3 goes
    # below 0.1 (20 splits). Permutation (the default) highlights nothing; Welch highlights the pair.
    experiment = _two_groups([-0.010, -0.011, -0.012], [-0.050, -0.051, -0.052])
    client.force_login(users.plain)
    by_test = {}
    for test in ("", "?test=permutation", "?test=welch"):
        html = client.get(f"/experiments/{experiment.pk}/compare/{test}").content.decode()
        row = re.search(r'<tr data-pair="A-C" class="([^"]*)"', html)
        assert row is not None
        by_test[test] = "sig" in row.group(1)
    assert by_test == {"": False, "?test=permutation": False, "?test=welch": True}
    data = client.get(f"/experiments/{experiment.pk}/summary.json?test=welch").json()
    assert data["test"] == "welch" and data["delta_source"] == "search"  # nothing confirmed in this experiment
    assert data["pairs"][0]["p_welch"] < 0.001 and data["pairs"][0]["p_permutation"] == pytest.approx(0.1)
    assert "Welch's t-test (two-sided), p < 0.05 after Holm's correction across all 1 pairs" in " ".join(data["notes"])


def test_an_interval_that_excludes_zero_is_not_a_highlight_without_the_test(client: Client, users: Any) -> None:
    # Like the paper's A vs C (Welch p = 0.17): one wide group; a bootstrap interval would exclude zero.
    experiment = _two_groups([-0.0085, -0.0110, -0.0080], [-0.0654, -0.0100, -0.0590])
    client.force_login(users.plain)
    data = client.get(f"/experiments/{experiment.pk}/summary.json?test=welch").json()
    pair = data["pairs"][0]
    assert pair["p_welch"] > 0.05 and not pair["highlighted"]
    assert pair["ci_low"] < 0 < pair["ci_high"] and pair["hedges_g"] > 0


def test_surrogate_results_say_so_wherever_they_travel(client: Client, users: Any) -> None:
    experiment = make_experiment(groups=("A", "B"))
    Experiment.objects.filter(pk=experiment.pk).update(objective="surrogate")
    label = "Surrogate (fitted model, not real training)"
    client.force_login(users.plain)
    page = client.get(f"/experiments/{experiment.pk}/compare/").content.decode()
    assert label in page.split("</h1>")[0]
    assert label in client.get(f"/experiments/{experiment.pk}/report.html").content.decode().split("</h1>")[0]
    summary = client.get(f"/experiments/{experiment.pk}/summary.csv").content.decode()
    assert {row["objective"] for row in csv.DictReader(io.StringIO(summary))} == {label}
    run = experiment.runs.get(group="B", repeat=1)
    export = client.get(f"/runs/{run.pk}/iterations/?format=csv")
    iterations = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))  # type: ignore[attr-defined]
    assert iterations and {row["objective"] for row in iterations} == {label}
    Run.objects.filter(pk=run.pk).update(level_strategy=True)  # the factory's runs have no Level 1.5 section
    run_page = client.get(f"/runs/{run.pk}/").content.decode()
    assert label in run_page and 'id="guidance-ignored"' in run_page
    Experiment.objects.filter(pk=experiment.pk).update(objective="trainer")
    assert label not in client.get(f"/experiments/{experiment.pk}/compare/").content.decode()
