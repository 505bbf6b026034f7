"""Level 2 aids for small models: few hooks per mechanism, a measured value counts as evidence from the
trace, evidence rows chosen from the trace, repeated candidate names made unique, and one dry-run error
seen on many traces is reported once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mechanisms.protocol import HookReturnError, check_hook_return, proposal_of, protocol_description
from mechanisms.research.artifact_checks import explore_defect
from mechanisms.research.prompts import (
    MAX_HOOKS,
    SPEC_FORMAT,
    candidate_fields,
    critique_prompt,
    dry_run_hints,
    explore_prompt,
    explore_schema,
    repair_prompt,
    spec_schema,
)
from mechanisms.research.session import _parse_explore, _parse_spec, _StepError, distinct_candidates
from mechanisms.validation.ladder import check_spec, grouped_errors, recorded_fixtures, validate_mechanism
from mechanisms.validation.static_check import static_check

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


TWO_PROPOSALS: list[Any] = [*TRACE, {"iteration": 2, "kind": "proposal", "status": "keep", "val_bpb": 3.1,
                                     "changes": {"WARMUP_RATIO": {"old": 0.0, "new": 0.05},
                                                 "WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}}]


def candidate(name: str, idea: str, field: str = "bandits") -> dict[str, Any]:
    return {"name": name, "field": field, "idea": idea, "hooks": ["propose"]}


def test_different_ideas_under_one_name_are_renamed_and_a_repeated_idea_is_dropped() -> None:
    reply = {"diagnosis": "iteration 1 got worse", "candidates": [
        candidate("metaheuristic_search", "anneal the step size"),
        candidate("metaheuristic_search", "a bandit over parameters", field="Multi-armed bandits"),
        candidate("metaheuristic_search", "a bandit over parameters", field="bandits"),  # the same idea again
        candidate("metaheuristic_search", "random restarts", field="Multi-armed bandits")]}
    parsed = _parse_explore(json.dumps(reply))
    names = [c["name"] for c in parsed["candidates"]]
    assert names == ["metaheuristic_search", "metaheuristic_search_multi_armed_bandits", "metaheuristic_search_2"]
    assert [c["idea"] for c in parsed["candidates"]] == ["anneal the step size", "a bandit over parameters",
                                                        "random restarts"]
    assert len(parsed["notes"]) == 3 and "dropped" in parsed["notes"][1]


def test_candidates_that_are_one_idea_repeated_are_refused_with_the_reason() -> None:
    reply = {"diagnosis": "iteration 1 got worse", "candidates": [candidate(n, "same idea") for n in "abc"]}
    with pytest.raises(_StepError, match="repeat the same idea"):
        _parse_explore(json.dumps(reply))


def test_two_different_ideas_among_three_candidates_are_enough_to_go_on() -> None:
    reply = {"diagnosis": "iteration 1 got worse", "candidates": [
        candidate("a_one", "anneal the step size"), candidate("b_two", "Anneal the  step size"),
        candidate("c_three", "a bandit over parameters")]}
    parsed = _parse_explore(json.dumps(reply))
    assert [c["name"] for c in parsed["candidates"]] == ["a_one", "c_three"]
    assert "dropped" in parsed["notes"][0]


def test_distinct_candidates_leave_distinct_ones_alone() -> None:
    kept, notes = distinct_candidates([candidate("a_one", "x"), candidate("b_two", "y"), candidate("c_three", "z")])
    assert [c["name"] for c in kept] == ["a_one", "b_two", "c_three"] and notes == []


def test_the_explore_schema_offers_only_the_traces_iterations_and_parameters_as_evidence() -> None:
    evidence = explore_schema(TWO_PROPOSALS)["properties"]["evidence"]
    # One alternative per proposal (the baseline changed nothing), with only the parameters it changed.
    rows = [(row["properties"]["iteration"]["const"], row["properties"]["parameter"]["enum"])
            for row in evidence["items"]["anyOf"]]
    assert rows == [(1, ["MATRIX_LR"]), (2, ["WARMUP_RATIO", "WEIGHT_DECAY"])]
    assert (evidence["minItems"], evidence["maxItems"]) == (1, 3)
    assert next(iter(explore_schema(TWO_PROPOSALS)["properties"])) == "evidence"  # chosen before the diagnosis
    assert "evidence" not in explore_schema(TRACE[:1])["properties"]  # nothing to cite yet
    assert "evidence" not in explore_schema()["properties"]


def test_an_evidence_row_true_of_the_trace_cites_it_and_a_false_one_is_refused_with_the_facts() -> None:
    generic = "the search does not explore enough"
    true_row = {"iteration": 2, "parameter": "WEIGHT_DECAY", "observation": "kept at 3.1"}
    assert explore_defect({"diagnosis": generic, "evidence": [true_row], "candidates": CANDIDATES},
                          TWO_PROPOSALS) is None
    false_rows = [{"iteration": 2, "parameter": "MATRIX_LR", "observation": "x"},
                  {"iteration": 7, "parameter": "MATRIX_LR", "observation": "y"}]
    defect = explore_defect({"diagnosis": generic, "evidence": false_rows, "candidates": CANDIDATES}, TWO_PROPOSALS)
    assert defect is not None
    assert "iteration 2 changed WARMUP_RATIO, WEIGHT_DECAY, not 'MATRIX_LR'" in defect
    assert "there is no iteration 7" in defect
    # A false row does not excuse a diagnosis that cites nothing, and one true row is enough.
    assert explore_defect({"diagnosis": generic, "evidence": [*false_rows, true_row], "candidates": CANDIDATES},
                          TWO_PROPOSALS) is None


def test_evidence_must_be_a_list_of_objects() -> None:
    reply = {"diagnosis": "d", "evidence": "iteration 2", "candidates": CANDIDATES}
    with pytest.raises(_StepError, match="'evidence' must be a list"):
        _parse_explore(json.dumps(reply))


def test_the_explore_prompt_asks_for_evidence_first_and_shows_counted_patterns_as_leads() -> None:
    prompt = explore_prompt(protocol_description(), "", TWO_PROPOSALS, [], [],
                            patterns=["fixation: 2 of the last 2 proposals changed MATRIX_LR"])
    keys = prompt[prompt.index("Its keys, in this order:"):]
    assert keys.index('"evidence"') < keys.index('"diagnosis"') < keys.index('"candidates"')
    assert "- fixation: 2 of the last 2 proposals changed MATRIX_LR" in prompt
    assert '"evidence"' not in explore_prompt(protocol_description(), "", TRACE[:1], [], [])


def test_each_candidate_comes_from_its_own_field_and_the_runs_symptoms_choose_the_first_ones() -> None:
    assert candidate_fields([]) == ["multi-armed bandits", "statistics", "design of experiments"]
    assert candidate_fields(["repetition", "crashes"]) == ["tabu search", "coordinate descent", "constraint learning"]
    assert candidate_fields(["noise", "fixation"]) == ["statistics", "multi-armed bandits", "design of experiments"]
    fields = candidate_fields(["repetition"])
    prompt = explore_prompt(protocol_description(), "", TWO_PROPOSALS, [], [], fields=fields)
    assert ("a list of 3 mechanisms, one from each of these fields, in this order:\n  1. tabu search: forbid moves "
            "that were tried recently\n  2. coordinate descent: ") in prompt
    candidates = explore_schema(TWO_PROPOSALS, fields)["properties"]["candidates"]
    assert candidates["items"]["properties"]["field"] == {"enum": fields}
    assert candidates["minItems"] == candidates["maxItems"] == 3


def test_a_candidate_copying_the_field_list_wording_is_an_echo() -> None:
    echoed = {"diagnosis": "iteration 1 raised MATRIX_LR and got worse", "candidates": [
        {**c, "idea": "one from each of these fields, in this order"} if i == 0 else c
        for i, c in enumerate(CANDIDATES)]}
    assert "repeats the reply format" in str(explore_defect(echoed, TRACE))


def test_the_critique_is_shown_the_evidence() -> None:
    explore = {"diagnosis": "d", "candidates": CANDIDATES,
               "evidence": [{"iteration": 1, "parameter": "MATRIX_LR", "observation": "3.21, discarded"}]}
    assert "- iteration 1, MATRIX_LR: 3.21, discarded" in critique_prompt(explore)


def traceback_in(hook: str, last_line: str) -> str:
    return (f"validation ladder failed at step 'dry_run': hook errors: this_run, paper_A1: {hook}() exception at "
            f"iteration 1: Traceback (most recent call last):\n  File \"<mechanism:m>\", line 10, in {hook}\n"
            f"    x = 1\n{last_line}\n")


def test_dry_run_errors_come_with_how_to_fix_them_naming_the_hook_and_the_name() -> None:
    [hint] = dry_run_hints(traceback_in("filter", "NameError: name 'result' is not defined"))
    assert hint.startswith("'result' is not defined in filter(self, proposal, state) (result is an argument of "
                           "accept only)")
    [hint] = dry_run_hints(traceback_in("propose", "AttributeError: 'M' object has no attribute 'step_size'"))
    assert "self.step_size but never defines it" in hint and "def step_size(self, ...)" in hint
    [hint] = dry_run_hints(traceback_in("accept", "TypeError: '>=' not supported between instances of 'NoneType' "
                                                  "and 'float'"))
    assert 'state["best"]["val_bpb"] is None before the baseline' in hint
    [hint] = dry_run_hints(traceback_in("propose", "KeyError: 'best'"))
    assert "no key 'best'" in hint and ".get('best')" in hint
    [hint] = dry_run_hints("hook errors: this_run: type error at iteration 1: accept() must return None or "
                           "{'keep': bool, 'reason': str}")
    assert hint.startswith('accept() must return None (no opinion) or {"keep": True or False')
    [hint] = dry_run_hints("validation ladder failed at step 'static': the spec lists hooks ['filter'] but the "
                           "class defines ['accept', 'filter', 'propose']")
    assert hint.startswith("define exactly the hooks of the class skeleton, filter, and no other hook method "
                           "(remove accept, propose)")
    [hint] = dry_run_hints("validation ladder failed at step 'dry_run': inert: the mechanism changed no decision")
    assert "replace every ... with a body" in hint
    assert dry_run_hints("validation ladder failed at step 'static': open is not allowed") == []


def test_only_the_generate_rounds_repair_carries_the_hints() -> None:
    error = traceback_in("filter", "NameError: name 'result' is not defined")
    generate = repair_prompt("generate", "Write the code.", "```python\nclass M: ...\n```", error)
    assert "How to fix it:\n- 'result' is not defined in filter" in generate
    assert generate.index("How to fix it:") < generate.index("Your previous reply:")
    assert "How to fix it" not in repair_prompt("specify", "Write the spec.", "{}", error)


def test_a_spec_naming_one_hook_three_times_names_it_once() -> None:
    spec, problems = check_spec({"name": "m_one", "class_name": "MOne", "hooks": ["filter", "filter", "filter"],
                                 "rationale": "r", "state_kept": "s", "expected_effect": "e"})
    assert problems == [] and spec is not None and spec["hooks"] == ["filter"]
    assert spec_schema()["properties"]["hooks"]["uniqueItems"] is True


@pytest.mark.parametrize(("code", "expected"), [
    ("import numpy as np\nclass A:\n    def filter(self, proposal, state):\n        return None\n",
     "numpy cannot be imported: use plain lists"),
    ("x = []\nx.append(1)\nclass A:\n    def filter(self, proposal, state):\n        return None\n",
     "move that statement into a method"),
    ("class A:\n    def filter(self, proposal):\n        return None\n",
     "write the method as def filter(self, proposal, state)"),
    ("class B:\n    def filter(self, proposal, state):\n        return None\n", "rename class B to A"),
    ("class A:\n    def filter(self, proposal, state):\n        return None\nclass C:\n    pass\n",
     "define one class only"),
    ("class A:\n    def filter(self, proposal, state):\n        setattr(self, 'n', 1)\n",
     "setattr() is not available: assign self.name = value directly"),
    ("class A:\n    def __init__(self, window):\n        self.window = window\n"
     "    def filter(self, proposal, state):\n        return None\n", "write def __init__(self):"),
    ("class A:\n    def filter(self, proposal, state):\n        return 1 if proposal\n",
     "line 3 (`return 1 if proposal`) is not valid Python: a conditional expression needs an else"),
    ("class A:\n    def filter(self, proposal, state):\n        return 'x\n",
     "line 3 (`return 'x`) is not valid Python: close the string on the line where it starts"),
    ("class A:\n    def filter(self, proposal, state):\n        return max(1, 2\n",
     "line 3 (`return max(1, 2`) is not valid Python: close every bracket you open"),
    ("class A:\n    def filter(self, proposal, state)\n        return None\n",
     "line 2 (`def filter(self, proposal, state)`) is not valid Python: end the def, class, if"),
    ("class A:\n    def filter(self, proposal, state):\n        return state['frozen'].__contains__('X')\n",
     "__contains__ cannot be used directly: write `item in container`"),
    ("class A:\n    def filter(self, proposal, state):\n        return proposal.__reduce__()\n",
     "__reduce__ cannot be used directly: write the operator or builtin function that calls it instead."),
    ("class A:\n    def filter(self, proposal, state):\n        return None $\n",
     "line 3 (`return None $`) is not valid Python: write it as valid Python 3"),
])
def test_each_kind_of_static_refusal_gets_a_way_to_fix_it(code: str, expected: str) -> None:
    problems = static_check(code, "A")
    assert problems, code
    error = "validation ladder failed at step 'static': " + "; ".join(problems)
    assert any(hint.startswith(expected) for hint in dry_run_hints(error)), (problems, dry_run_hints(error))


def test_the_spec_is_not_asked_for_a_class_name_and_gets_one_from_its_name() -> None:
    assert "class_name" not in spec_schema()["properties"] and "PascalCase" not in SPEC_FORMAT
    spec = _parse_spec(json.dumps({"name": "parameter_tabu_list", "hooks": ["filter"], "rationale": "r",
                                   "state_kept": "s", "expected_effect": "e"}))
    assert spec["class_name"] == "ParameterTabuList"
    given = _parse_spec(json.dumps({**spec, "name": "tabu", "class_name": "TabuSearch"}))
    assert given["class_name"] == "TabuSearch"  # a valid one given (the catalogue's) is kept


def test_a_filter_that_blocks_the_search_is_told_to_reject_only_what_its_idea_is_about() -> None:
    spec = {"name": "no", "class_name": "No", "hooks": ["filter"], "rationale": "r", "state_kept": "s",
            "expected_effect": "e"}
    code = "class No:\n    def filter(self, proposal, state):\n        return {'reject': 'no val_bpb'}\n"
    report = validate_mechanism(spec, code, [f for f in recorded_fixtures()][:2])
    failed = report.failed_step
    assert failed is not None and failed["step"] == "dry_run" and "blocks the search" in failed["detail"]
    hints = dry_run_hints(f"validation ladder failed at step 'dry_run': {failed['detail']}")
    assert [hint for hint in hints if hint.startswith("filter() must return None for most proposals")]


@pytest.mark.parametrize(("body", "expected"), [
    ("        self.ratio = record['iteration'] / 0\n", "a division by zero: check that the divisor is not 0"),
    ("        self.size = math.log(0)\n", "math.log or math.sqrt was given 0 or a negative number"),
    ("        self.last = [][-1]\n", "a list was shorter than the code assumed"),
])
def test_arithmetic_and_index_errors_in_a_hook_get_a_guard_to_write(body: str, expected: str) -> None:
    spec = {"name": "guarded", "class_name": "Guarded", "hooks": ["on_result", "filter"], "rationale": "r",
            "state_kept": "s", "expected_effect": "e"}
    code = ("import math\n\nclass Guarded:\n    def on_result(self, record, state):\n" + body
            + "    def filter(self, proposal, state):\n        return None\n")
    failed = validate_mechanism(spec, code, recorded_fixtures()[:1]).failed_step
    assert failed is not None and failed["step"] == "dry_run", failed
    hints = dry_run_hints(f"validation ladder failed at step 'dry_run': {failed['detail']}")
    assert [hint for hint in hints if hint.startswith(expected)], (failed["detail"], hints)


def test_a_restrict_returning_an_empty_list_means_no_restriction() -> None:
    assert check_hook_return("restrict", []) is None
    assert check_hook_return("restrict", ["MATRIX_LR", "MATRIX_LR"]) == ["MATRIX_LR"]
    with pytest.raises(HookReturnError):
        check_hook_return("restrict", ["MATRIX_LR", ""])


def test_a_comparison_with_none_in_a_hook_names_the_operands_to_check() -> None:
    spec = {"name": "best", "class_name": "Best", "hooks": ["on_result", "prompt_sections"], "rationale": "r",
            "state_kept": "s", "expected_effect": "e"}
    code = ("class Best:\n    def __init__(self):\n        self.better = 0\n"
            "    def on_result(self, record, state):\n"
            "        if record['val_bpb'] is not None:\n"
            "            if record['val_bpb'] < state['best']['val_bpb']:\n"
            "                self.better += 1\n"
            "    def prompt_sections(self, state):\n        return None\n")
    failed = validate_mechanism(spec, code, recorded_fixtures()[:1]).failed_step
    assert failed is not None and "NoneType" in failed["detail"], failed
    hints = dry_run_hints(f"validation ladder failed at step 'dry_run': {failed['detail']}")
    assert hints[0] == (
        "line 6 (`if record['val_bpb'] < state['best']['val_bpb']:`) used None as a number: check "
        "record['val_bpb'], state['best']['val_bpb'] first, e.g. `if record['val_bpb'] is not None and "
        "state['best']['val_bpb'] is not None:` around it, and return None from the hook otherwise.")


def test_an_inert_filter_is_shown_what_the_proposals_it_saw_look_like() -> None:
    spec = {"name": "noise", "class_name": "Noise", "hooks": ["filter"], "rationale": "r", "state_kept": "s",
            "expected_effect": "e"}
    code = ("class Noise:\n    def filter(self, proposal, state):\n"
            "        if 'val_bpb' not in proposal['changes']:\n            return None\n"
            "        return {'reject': 'noisy'}\n")
    fixtures = recorded_fixtures()[:1]
    failed = validate_mechanism(spec, code, fixtures).failed_step
    assert failed is not None and failed["detail"].startswith("inert"), failed
    proposals = sum(1 for r in fixtures[0].trace if r.get("kind") == "proposal" and r.get("changes"))
    first = next(r for r in fixtures[0].trace if r.get("kind") == "proposal" and r.get("changes"))
    assert f"its deciding hooks were called (filter() {proposals} times) and changed no decision" in failed["detail"]
    assert json.dumps(proposal_of(first))[:60] in failed["detail"]


def test_a_restriction_naming_placeholder_parameters_is_told_where_the_real_names_are() -> None:
    spec = {"name": "only", "class_name": "Only", "hooks": ["restrict"], "rationale": "r", "state_kept": "s",
            "expected_effect": "e"}
    code = "class Only:\n    def restrict(self, state):\n        return ['PARAM1', 'PARAM2']\n"
    failed = validate_mechanism(spec, code, recorded_fixtures()[:1]).failed_step
    assert failed is not None and "PARAM1 is not in the search space" in failed["detail"], failed
    hints = dry_run_hints(f"validation ladder failed at step 'dry_run': {failed['detail']}")
    assert [hint for hint in hints if hint.startswith('name only real parameters, read at run time from the state: '
                                                       '[p["name"] for p in state["search_space"]')], hints


def test_a_key_error_for_a_value_the_mechanism_keeps_itself_points_to_self() -> None:
    spec = {"name": "tabu", "class_name": "Tabu", "hooks": ["prompt_sections"], "rationale": "r", "state_kept": "s",
            "expected_effect": "e"}
    code = ("class Tabu:\n    def __init__(self):\n        self.seen = []\n"
            "    def prompt_sections(self, state):\n        return ['Tried: ' + ', '.join(state['seen'])]\n")
    failed = validate_mechanism(spec, code, recorded_fixtures()[:1]).failed_step
    assert failed is not None and "KeyError: 'seen'" in failed["detail"], failed
    hints = dry_run_hints(f"validation ladder failed at step 'dry_run': {failed['detail']}")
    assert ("'seen' is not a key of state, record, proposal or result (state has only iteration, preset, strategy, "
            "search_space, frozen, guidance, config, best, baseline, trace): keep what the mechanism remembers on "
            "self, e.g. self.seen, set in __init__ and on_result.") in hints
    for key in ("noise_sd", "MATRIX_LR"):  # a protocol key or a parameter a record did not change: read with .get
        assert dry_run_hints(f"KeyError: '{key}'")[0].startswith(f"a dict has no key '{key}': read it with .get(")


def test_an_attribute_error_on_a_plain_value_names_its_operations_and_one_on_the_class_its_method() -> None:
    [on_list] = dry_run_hints("AttributeError: 'list' object has no attribute 'contains'")
    assert on_list == ("a list has no attribute 'contains' (the hooks' arguments are plain JSON values): use "
                       "`item in values`, len(values), values.append(item), values.count(item).")
    [on_class] = dry_run_hints("AttributeError: 'Tabu' object has no attribute 'best'")
    assert on_class.startswith("the class uses self.best but never defines it")
    assert not [hint for hint in dry_run_hints("AttributeError: 'NoneType' object has no attribute 'get'")
                if "self.get" in hint]


def test_a_propose_whose_proposals_the_engine_refuses_blocks_the_search_and_fails_the_dry_run() -> None:
    spec = {"name": "bandit", "class_name": "Bandit", "hooks": ["prompt_sections", "propose"], "rationale": "r",
            "state_kept": "s", "expected_effect": "e"}
    code = ("class Bandit:\n    def prompt_sections(self, state):\n        return ['Explore the arms.']\n"
            "    def propose(self, state):\n"
            "        return {'changes': {'param1': 10, 'param2': 20}, 'hypothesis': 'example'}\n")
    failed = validate_mechanism(spec, code, recorded_fixtures()[:2]).failed_step
    assert failed is not None and failed["step"] == "dry_run", failed
    assert failed["detail"].startswith("blocks the search: the engine would refuse ")
    assert "param1" in failed["detail"]
    hints = dry_run_hints(f"validation ladder failed at step 'dry_run': {failed['detail']}")
    assert [hint for hint in hints if hint.startswith("propose() must return proposals the engine accepts")], hints
    assert not [hint for hint in hints if hint.startswith("filter()")], hints
