"""Level 2 aids for small models: few hooks per mechanism, a measured value counts as evidence from the
trace, and one dry-run error seen on many traces is reported once."""

from __future__ import annotations

from typing import Any

from mechanisms.artifact_checks import explore_defect
from mechanisms.ladder import grouped_errors
from mechanisms.research_prompts import MAX_HOOKS, explore_schema, spec_schema

TRACE: list[Any] = [
    {"iteration": 0, "kind": "baseline", "changes": {}, "val_bpb": 3.13174, "status": "baseline"},
    {"iteration": 1, "kind": "proposal", "changes": {"MATRIX_LR": {"old": 0.04, "new": 0.08}},
     "val_bpb": 3.2132, "status": "discard"},
]
CANDIDATES = [{"name": n, "field": "f", "idea": "i", "hooks": ["propose"]} for n in ("alpha", "beta", "gamma")]


def test_a_diagnosis_quoting_a_measured_val_bpb_cites_the_trace() -> None:
    quoting = {"diagnosis": "val_bpb got worse, 3.21 against the baseline 3.13", "candidates": CANDIDATES}
    assert explore_defect(quoting, TRACE) is None


def test_a_diagnosis_with_numbers_that_were_never_measured_still_names_nothing() -> None:
    generic = {"diagnosis": "the search should aim for 2.50 or better and explore more", "candidates": CANDIDATES}
    defect = explore_defect(generic, TRACE)
    assert defect is not None and "names nothing from the trace" in defect and "val_bpb values" in defect


def test_mechanisms_name_one_to_three_hooks_in_the_reply_schemas() -> None:
    assert MAX_HOOKS == 3
    assert spec_schema()["properties"]["hooks"]["maxItems"] == 3
    candidate = explore_schema()["properties"]["candidates"]["items"]
    assert candidate["properties"]["hooks"]["maxItems"] == 3


def test_the_same_dry_run_error_on_many_traces_is_reported_once() -> None:
    errors = [f"{trace}: propose() crashed at iteration 1: AttributeError: 'M' object has no attribute 'best'"
              for trace in ("this_run", "crashing_capacity", "paper_A1")] + ["paper_C1: load failed: boom"]
    text = grouped_errors(errors)
    assert text.count("AttributeError") == 1
    assert text.startswith("this_run, crashing_capacity, paper_A1: propose() crashed")
    assert text.endswith("paper_C1: load failed: boom")
