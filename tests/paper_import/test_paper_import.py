"""The paper importer on the two published fixture files and on malformed inputs (nothing half-imported)."""

from __future__ import annotations

import copy
import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from mechanisms.validation.ladder import PAPER_RUNS_DIR
from runs.analysis.comparison import build_comparison
from runs.analysis.paper_import import PaperImportError, import_reports, parse_report
from runs.models import Experiment, Iteration, Run

FIXTURES = PAPER_RUNS_DIR

pytestmark = pytest.mark.django_db


def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def _import_both() -> tuple[Experiment, Run, Run]:
    experiment, runs = import_reports([(n, (FIXTURES / n).read_bytes()) for n in ("A1.json", "C1.json")])
    by_group = {r.group: r for r in runs}
    return experiment, by_group["A"], by_group["C"]


def test_a1_is_imported_with_the_published_numbers() -> None:
    experiment, a1, _ = _import_both()
    assert experiment.is_reference and experiment.groups == ["A", "C"] and experiment.repeats == 1
    a1.refresh_from_db()
    # From A1.json: baseline 1.104926, best 1.096392 at iter 3, improvement 0.008534,
    # 31 rows = 1 baseline + 30 proposals; keeps 4 in the file counts the baseline row.
    assert (a1.baseline_val_bpb, a1.best_val_bpb, a1.best_iteration) == (1.104926, 1.096392, 3)
    assert a1.proposals_done == 30 and a1.status == "completed"
    rows = list(a1.iteration_set.order_by("index"))
    assert [r.index for r in rows] == list(range(31))
    assert rows[0].kind == "baseline" and rows[0].status == "baseline" and rows[0].val_bpb == 1.104926
    assert [r.index for r in rows if r.status == "keep"] == [1, 2, 3]
    assert sum(r.status == "discard" for r in rows) == 27
    assert rows[1].hypothesis.startswith("The current weight decay of 0.2 is quite high")
    assert rows[2].best_before == 1.099455


def test_c1_batches_are_renumbered_and_rebaselines_are_not_proposals() -> None:
    _, _, c1 = _import_both()
    c1.refresh_from_db()
    rows = list(c1.iteration_set.order_by("index"))
    # 33 rows: three batches of (baseline + 10 proposals); baselines at positions 0, 11, 22.
    assert len(rows) == 33
    assert [r.index for r in rows if r.kind == "baseline"] == [0, 11, 22]
    assert [r.val_bpb for r in rows if r.kind == "baseline"] == [1.113135, 1.104619, 1.10707]
    assert c1.proposals_done == 30
    # Best 1.047687 is iter 10 of the third batch: renumbered index 32.
    assert (c1.baseline_val_bpb, c1.best_val_bpb, c1.best_iteration) == (1.113135, 1.047687, 32)
    assert [r.index for r in rows if r.status == "keep"] == [2, 6, 7, 25, 26, 27, 32]
    assert c1.baseline_val_bpb is not None and c1.best_val_bpb is not None
    assert c1.baseline_val_bpb - c1.best_val_bpb == pytest.approx(0.065448, abs=1e-9)


def test_reference_runs_appear_in_the_comparison() -> None:
    experiment, _, _ = _import_both()
    data = build_comparison(experiment)
    assert data["budget"] == 30
    groups = {g["key"]: g for g in data["groups"]}
    assert groups["A"]["n"] == 1 and groups["A"]["delta"]["mean"] == pytest.approx(1.096392 - 1.104926)
    assert groups["C"]["best"]["mean"] == pytest.approx(1.047687)
    assert groups["A"]["keeps"] == 3 and groups["C"]["keeps"] == 7
    # Running best after the first batch of C: 1.103146 (the re-baseline 1.104619 does not raise it).
    assert groups["C"]["runs"][0]["running_best"][10] == pytest.approx(1.103146)
    assert groups["C"]["runs"][0]["running_best"][-1] == pytest.approx(1.047687)
    assert len(groups["C"]["runs"][0]["running_best"]) == 31


def test_management_command_imports_and_reports(capsys: Any) -> None:
    out = StringIO()
    call_command("import_paper_runs", str(FIXTURES / "A1.json"), "--experiment-name", "paper", stdout=out)
    assert "A1: baseline 1.104926, best 1.096392" in out.getvalue()
    assert Experiment.objects.get(name="paper").runs.count() == 1
    with pytest.raises(CommandError, match="already imported"):
        call_command("import_paper_runs", str(FIXTURES / "A1.json"), "--experiment-name", "paper", stdout=out)
    assert Iteration.objects.count() == 31


def _mutations() -> list[tuple[str, Any]]:
    def drop(key: str) -> Any:
        def apply(d: dict[str, Any]) -> None:
            del d[key]
        return apply

    def setter(path: list[Any], value: Any) -> Any:
        def apply(d: dict[str, Any]) -> None:
            target: Any = d
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
        return apply

    return [
        ("missing key", drop("baseline_bpb")),
        ("unknown group", setter(["group"], "Z")),
        ("repeat", setter(["repeat"], "1")),
        ("repeat", setter(["repeat"], 0)),
        ("finite number", setter(["trace", 4, "bpb"], "1.1")),
        ("status must be one of", setter(["trace", 4, "status"], "maybe")),
        ("desc must be a string", setter(["trace", 4, "desc"], None)),
        ("keeps is 5 but the trace has 4", setter(["keeps"], 5)),
        ("total_iterations", setter(["total_iterations"], 30)),
        ("best_val_bpb", setter(["best_val_bpb"], 1.0)),
        ("improvement", setter(["improvement"], 0.5)),
        ("best_iteration", setter(["best_iteration"], 4)),
        ("count up by one", setter(["trace", 5, "iter"], 9)),
        ("only crashes carry bpb 0", setter(["trace", 5, "bpb"], 0)),
        ("crashes carry bpb 0", setter(["trace", 5, "status"], "crash")),
        ("trace must be a non-empty list", setter(["trace"], {})),
        ("missing 'desc'", lambda d: d["trace"][3].pop("desc")),
        ("trace[7] must be an object", setter(["trace", 7], [1, 2])),
    ]


@pytest.mark.parametrize(("message", "mutate"), _mutations())
def test_malformed_files_are_rejected_and_nothing_is_written(message: str, mutate: Any) -> None:
    data = _load("A1.json")
    broken = copy.deepcopy(data)
    mutate(broken)
    good_c1 = (FIXTURES / "C1.json").read_bytes()
    with pytest.raises(PaperImportError, match=message.replace("(", r"\(").replace("[", r"\[")):
        # The good file comes first: it must not be written either.
        import_reports([("C1.json", good_c1), ("A1.json", json.dumps(broken))])
    assert Experiment.objects.count() == 0 and Run.objects.count() == 0 and Iteration.objects.count() == 0


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"\xff\xfe", b'"text"', b"null"])
def test_non_json_or_non_object_is_rejected(content: bytes) -> None:
    with pytest.raises(PaperImportError, match=r"x\.json: "):
        parse_report(content, "x.json")


def test_two_files_for_the_same_run_are_rejected() -> None:
    a1 = (FIXTURES / "A1.json").read_bytes()
    with pytest.raises(PaperImportError, match="both group A repeat 1"):
        import_reports([("A1.json", a1), ("copy.json", a1)])
    assert Run.objects.count() == 0


def test_a_non_reference_experiment_is_not_imported_into() -> None:
    Experiment.objects.create(name="ours", groups=["A"])
    with pytest.raises(PaperImportError, match="not a reference experiment"):
        import_reports([("A1.json", (FIXTURES / "A1.json").read_bytes())], experiment_name="ours")
    assert Run.objects.count() == 0


def test_d1_later_batches_restart_at_one_without_a_baseline_row() -> None:
    experiment, runs = import_reports([(n, (FIXTURES / n).read_bytes()) for n in ("A1.json", "C1.json", "D1.json")])
    assert experiment.groups == ["A", "C", "D"]
    d1 = next(r for r in runs if r.group == "D")
    rows = list(d1.iteration_set.order_by("index"))
    # 31 rows: a baseline and three batches of ten proposals (iter 1-10 each), no re-baselines.
    assert len(rows) == 31 and d1.proposals_done == 30
    assert [r.index for r in rows if r.kind == "baseline"] == [0]
    assert (d1.baseline_val_bpb, d1.best_val_bpb, d1.best_iteration) == (1.094523, 1.093543, 7)
    assert rows[11].decision_reason == "as published (iter 1 of its batch)"
    assert {r.group: round((r.baseline_val_bpb or 0) - (r.best_val_bpb or 0), 6) for r in runs} == {
        "A": 0.008534, "C": 0.065448, "D": 0.00098}


def test_a_restart_in_the_middle_of_a_batch_names_file_and_field() -> None:
    broken = _load("D1.json")
    broken["trace"][2]["iter"] = 7
    with pytest.raises(PaperImportError, match=r"^D1\.json: trace\[2\]\.iter is 7 after 1"):
        import_reports([("D1.json", json.dumps(broken))])
    assert Run.objects.count() == 0
