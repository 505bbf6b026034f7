"""The validation ladder on the catalogue (each passes) and on broken code (fails at the right step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mechanisms.catalogue import catalogue_entries
from mechanisms.protocol import proposal_of, state_before
from mechanisms.research.prompts import dry_run_hints
from mechanisms.sandbox.host import MechanismHost
from mechanisms.validation.ladder import (
    PAPER_RUNS_DIR,
    TraceFixture,
    paper_run_fixtures,
    paper_run_trace,
    recorded_fixtures,
    validate_mechanism,
)

SPEC: dict[str, Any] = {"name": "probe", "class_name": "Probe", "hooks": ["filter"], "rationale": "r",
                        "state_kept": "nothing", "expected_effect": "rejects depth changes"}
GOOD = "class Probe:\n    def filter(self, proposal, state):\n        return {'reject': 'no'}\n"


@pytest.fixture(scope="module")
def fixtures() -> list[TraceFixture]:
    return recorded_fixtures()


@pytest.mark.parametrize("entry", catalogue_entries(), ids=lambda e: e.name)
def test_catalogue_mechanism_passes(entry: Any, fixtures: list[TraceFixture]) -> None:
    report = validate_mechanism(entry.spec, entry.code, fixtures)
    assert report.ok, report.steps
    assert [s["step"] for s in report.steps] == ["spec", "static", "import", "dry_run"]
    assert report.dry_run_report["changed_decisions"] > 0
    assert report.dry_run_report["invalid_decisions"] == 0  # each counted change is one the engine would take
    for trace_report in report.dry_run_report["traces"]:
        assert set(trace_report["max_seconds"]) <= set(entry.spec["hooks"])


def test_tabu_rejects_exactly_the_repeated_moves(fixtures: list[TraceFixture]) -> None:
    tabu = next(e for e in catalogue_entries() if e.name == "tabu")
    repeated = next(f for f in fixtures if f.name == "repeated_proposals")
    rejected = []
    with MechanismHost() as host:
        host.load([{"name": "tabu", "class_name": tabu.class_name, "code": tabu.code}])
        for index, record in enumerate(repeated.trace):
            state = state_before(repeated.state, repeated.trace, index)
            if record["changes"] and host.call("tabu", "filter", proposal_of(record), state) is not None:
                rejected.append(record["iteration"])
            host.call("tabu", "on_result", record, state)
    # WINDOW_PATTERN=SSSS at 3, 5, 9 and EMBEDDING_LR=0.3 at 7, 11 repeat moves within the tenure;
    # WEIGHT_DECAY=0.2 (6) and 0.05 (8) are new values; WEIGHT_DECAY=0.1 (10) was kept 9 iterations ago.
    assert rejected == [3, 5, 7, 9, 11]
    report = validate_mechanism(tabu.spec, tabu.code, [repeated])
    assert report.dry_run_report["traces"][0]["changed"]["proposal_rejected"] == 5


PROPOSER: dict[str, Any] = {**SPEC, "name": "proposer", "class_name": "Proposer", "hooks": ["propose"],
                             "expected_effect": "replaces proposals"}


def _proposer(changes: str, restrict: str | None = None) -> str:
    code = ("class Proposer:\n    def propose(self, state):\n"
            f"        return {{'changes': {changes}, 'hypothesis': 'h'}}\n")
    if restrict is not None:
        code += f"\n    def restrict(self, state):\n        return {restrict}\n"
    return code


def _fixated(fixtures: list[TraceFixture], frozen: list[str] | None = None) -> TraceFixture:
    fixated = next(f for f in fixtures if f.name == "fixated_matrix_lr")
    return TraceFixture(fixated.name, fixated.trace, {**fixated.state, "frozen": frozen or []})


@pytest.mark.parametrize(("changes", "frozen", "shown", "why"), [
    ("{'DEPTH': state['config']['DEPTH'] + 1}", [], "DEPTH 4→5", "DEPTH is locked"),
    ("{'MATRIX_LR': state['config']['MATRIX_LR'] / 2}", ["MATRIX_LR"], "MATRIX_LR 0.09→0.045",
     "MATRIX_LR is frozen by the strategy level"),
    ("{'MATRIX_LR': state['config']['MATRIX_LR'] * 100}", [], "MATRIX_LR 0.09→9.0",
     "MATRIX_LR must be between 0.001 and 1, got 9"),
    ("{'MATRIX_LR': state['config']['MATRIX_LR']}", [], "MATRIX_LR 0.09→0.09",
     "MATRIX_LR is already 0.09; the change would do nothing"),
    ("{'WARMUP_RATIO': 0.3, 'WARMDOWN_RATIO': 0.8}", [], "WARMUP_RATIO 0.0→0.3, WARMDOWN_RATIO 0.5→0.8",
     "WARMUP_RATIO + WARMDOWN_RATIO must be at most 1"),
])
def test_proposals_the_engine_would_refuse_change_no_decision(changes: str, frozen: list[str], shown: str, why: str,
                                                              fixtures: list[TraceFixture]) -> None:
    report = validate_mechanism(PROPOSER, _proposer(changes), [_fixated(fixtures, frozen)])
    failed = report.failed_step
    assert failed is not None and failed["step"] == "dry_run", report.steps
    assert failed["detail"].startswith("inert") and f"proposed {shown}, but {why}" in failed["detail"], failed["detail"]
    dry_run = report.dry_run_report
    proposals = sum(1 for record in _fixated(fixtures).trace if record["kind"] == "proposal")
    assert (dry_run["changed_decisions"], dry_run["invalid_decisions"]) == (0, proposals)
    assert dry_run["traces"][0]["invalid"] == {"proposals": proposals, "restrictions": 0}
    assert why in dry_run["traces"][0]["invalid_examples"][0]["reason"]


def test_a_valid_matrix_lr_proposal_changes_decisions(fixtures: list[TraceFixture]) -> None:
    report = validate_mechanism(PROPOSER, _proposer("{'MATRIX_LR': state['config']['MATRIX_LR'] / 2}"),
                                [_fixated(fixtures)])
    assert report.ok, report.steps
    proposals = sum(1 for record in _fixated(fixtures).trace if record["kind"] == "proposal")
    assert report.dry_run_report["traces"][0]["changed"]["proposal_replaced"] == proposals
    assert report.dry_run_report["invalid_decisions"] == 0


def test_restrictions_count_only_tunable_names_and_bind_the_proposal(fixtures: list[TraceFixture]) -> None:
    locked_only = validate_mechanism(PROPOSER | {"hooks": ["propose", "restrict"]},
                                     _proposer("{'MATRIX_LR': 0.05}", restrict="['DEPTH', 'ASPECT_RATIO']"),
                                     [_fixated(fixtures)])
    trace = locked_only.dry_run_report["traces"][0]
    # The restriction is ignored (as the engine ignores it), so the proposal stands.
    assert trace["changed"]["restricted"] == 0 and trace["changed"]["proposal_replaced"] > 0
    assert trace["invalid"]["restrictions"] == trace["invalid"]["proposals"] + trace["changed"]["proposal_replaced"]
    assert trace["invalid_examples"][0]["reason"] == "DEPTH is locked; ASPECT_RATIO is locked"

    elsewhere = validate_mechanism(PROPOSER | {"hooks": ["propose", "restrict"]},
                                   _proposer("{'WEIGHT_DECAY': 0.3}", restrict="['MATRIX_LR']"), [_fixated(fixtures)])
    trace = elsewhere.dry_run_report["traces"][0]
    assert trace["changed"]["restricted"] > 0 and trace["changed"]["proposal_replaced"] == 0
    assert trace["invalid"]["proposals"] == trace["changed"]["restricted"]
    assert "WEIGHT_DECAY is outside this iteration's restriction to MATRIX_LR" in \
        trace["invalid_examples"][0]["reason"]


@pytest.mark.parametrize(("spec", "code", "step", "message"), [
    ("{not json", GOOD, "spec", "spec is not valid JSON"),
    ({**SPEC, "hooks": ["reject_everything"]}, GOOD, "spec", "unknown hooks"),
    ({**SPEC, "rationale": ""}, GOOD, "spec", "spec['rationale'] must be a non-empty string"),
    (SPEC, "import os\n" + GOOD, "static", "import of 'os' is not allowed"),
    (SPEC, GOOD.replace("Probe", "Other"), "static", "the spec names 'Probe'"),
    ({**SPEC, "hooks": ["filter", "accept"]}, GOOD, "static", "the class defines ['filter']"),
    (SPEC, "X = 1 // 1\nY = [0][X]\n" + GOOD, "import", "IndexError"),
    (SPEC, GOOD.replace("{'reject': 'no'}", "{'reject': 1}"), "dry_run", "reject reason must be a string"),
    (SPEC, GOOD.replace("{'reject': 'no'}", "None"), "dry_run", "inert"),
    (SPEC, GOOD.replace("return {'reject': 'no'}", "return {'reject': str(1 / 0)}"), "dry_run",
     "ZeroDivisionError"),
])
def test_broken_code_fails_at_the_right_step(spec: Any, code: str, step: str, message: str,
                                             fixtures: list[TraceFixture]) -> None:
    report = validate_mechanism(spec, code, fixtures[:1])
    failed = report.failed_step
    assert not report.ok and failed is not None
    assert failed["step"] == step, report.steps
    assert message in failed["detail"], failed["detail"]


def test_hanging_hook_fails_the_dry_run_with_a_timeout(fixtures: list[TraceFixture]) -> None:
    code = GOOD.replace("return {'reject': 'no'}", "while len(state) > 0:\n            pass")
    report = validate_mechanism(SPEC, code, fixtures[:1], time_limit_per_call=0.3)
    failed = report.failed_step
    assert failed is not None and failed["step"] == "dry_run" and "timeout" in failed["detail"]


def test_paper_run_conversion() -> None:
    data = {"group": "C", "repeat": 1, "trace": [
        {"iter": 0, "bpb": 1.11, "status": "keep", "desc": "baseline"},
        {"iter": 1, "bpb": 0, "status": "crash", "desc": "bigger batch"},
        {"iter": 2, "bpb": 1.10, "status": "keep", "desc": "lower wd"},
        {"iter": 0, "bpb": 1.10, "status": "keep", "desc": "baseline"},
        {"iter": 1, "bpb": 1.12, "status": "discard", "desc": "x"}]}
    trace = paper_run_trace(data)
    assert [r["iteration"] for r in trace] == [0, 1, 2, 3, 4]
    assert [r["kind"] for r in trace] == ["baseline", "proposal", "proposal", "baseline_repeat", "proposal"]
    assert [r["status"] for r in trace] == ["baseline", "crash", "keep", "baseline", "discard"]
    assert trace[1]["val_bpb"] is None and trace[1]["changes"] == {}
    assert json.loads(json.dumps(trace)) == trace


def test_paper_runs_load_from_the_repository(tmp_path: Path) -> None:
    loaded = paper_run_fixtures()
    assert [f.name for f in loaded] == ["paper_A1", "paper_C1", "paper_D1"]
    assert all(f.trace and f.trace[0]["kind"] == "baseline" for f in loaded)
    assert PAPER_RUNS_DIR.is_relative_to(Path(__file__).resolve().parents[2])
    (tmp_path / "A1.json").write_text((PAPER_RUNS_DIR / "A1.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"C1\.json, D1\.json"):
        paper_run_fixtures(tmp_path)


# Written by the local 1.5B model (issue 15's measurement): proposals never carry a val_bpb, so this filter
# rejects every one. It changed "decisions" on every trace; activated, it made each later iteration invalid.
REJECTS_EVERY_PROPOSAL = '''import math

class StatisticalAnalysis:
    def __init__(self):
        self.seen = []

    def on_result(self, record, state):
        if record["kind"] == "proposal" and record.get("val_bpb") is not None:
            self.seen.append(record["val_bpb"])

    def filter(self, proposal, state):
        new_val_bpb = proposal.get("changes", {}).get("val_bpb", None)
        if new_val_bpb is None:
            return {"reject": "No val_bpb provided"}
        return None
'''


@pytest.mark.parametrize("code", [GOOD, REJECTS_EVERY_PROPOSAL], ids=["reject-all", "llm-written"])
def test_a_filter_rejecting_most_proposals_blocks_the_search_and_is_refused(
        code: str, fixtures: list[TraceFixture]) -> None:
    spec = {**SPEC, "name": "statistical_analysis", "class_name": "StatisticalAnalysis",
            "hooks": ["on_result", "filter"]} if "StatisticalAnalysis" in code else SPEC
    report = validate_mechanism(spec, code, fixtures)
    failed = report.failed_step
    assert failed is not None and failed["step"] == "dry_run"
    assert failed["detail"].startswith("blocks the search: filter() rejected ")
    calls = sum(t["hook_calls"].get("filter", 0) for t in report.dry_run_report["traces"])
    assert f"rejected {calls} of the {calls} recorded proposals" in failed["detail"]


def test_a_filter_rejecting_some_of_the_proposals_still_passes(fixtures: list[TraceFixture]) -> None:
    alternate = ("class Probe:\n    def filter(self, proposal, state):\n"
                 "        return {'reject': 'every third'} if state['iteration'] % 3 == 0 else None\n")
    report = validate_mechanism(SPEC, alternate, fixtures)
    traces = report.dry_run_report["traces"]
    calls = sum(t["hook_calls"].get("filter", 0) for t in traces)
    rejected = sum(t["changed"]["proposal_rejected"] for t in traces)
    assert 0 < rejected <= calls / 2 and report.ok, report.steps


PRINTS_AND_TRACKS_A_MINIMUM = '''
class Probe:
    def filter(self, proposal, state):
        best = float("inf")
        for record in state["trace"]:
            if record["val_bpb"] is not None:
                best = min(best, record["val_bpb"])
        print("best so far", best)
        return {"reject": "every third"} if state["iteration"] % 3 == 0 else None
'''


def test_print_and_an_internal_infinity_pass_the_ladder_and_a_returned_one_is_named(
        fixtures: list[TraceFixture]) -> None:
    report = validate_mechanism(SPEC, PRINTS_AND_TRACKS_A_MINIMUM, fixtures)
    assert report.ok, report.steps
    returns_infinity = PRINTS_AND_TRACKS_A_MINIMUM.replace('"every third"}', '"every third", "floor": -float("inf")}')
    failed = validate_mechanism(SPEC, returns_infinity, fixtures).failed_step
    assert failed is not None and failed["step"] == "dry_run" and "not JSON" in failed["detail"], failed
    assert any("returned inf or NaN" in hint for hint in dry_run_hints(failed["detail"]))
