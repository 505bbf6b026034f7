"""The dry run's proposal check agrees with the engine's (trainer.schema.apply_changes) on the real schema."""

from __future__ import annotations

from typing import Any

import pytest

from mechanisms.protocol import State
from mechanisms.validation.proposal_check import describe_changes, proposal_problems
from trainer.schema import PRESETS, ConfigError, apply_changes, config_to_json, default_config, schema_json

FROZEN = ["FINAL_LR_FRAC"]


def _state(preset: str) -> State:
    return {"iteration": 3, "search_space": schema_json(preset), "frozen": FROZEN,  # type: ignore[typeddict-item]
            "guidance": "", "config": config_to_json(default_config(preset)),
            "best": {"val_bpb": None, "iteration": None}, "baseline": {"val_bpb": None, "noise_sd": None},
            "trace": []}


def _candidates(param: dict[str, Any]) -> list[Any]:
    """Values around every rule of a knob: bounds, types, text forms, choices, lengths."""
    values: list[Any] = [param["default"], None, True, "abc", -1, 0, 1, 3, 1.5, 0.5, 1e9, [0.5, 0.5], [0.5],
                         "[0.9, 0.99]", "(0.9, 0.99)", [0.0, 0.5], "2**5", "2**12", "2**99", "SSSSL", "LLL", "SSXL",
                         "", "ssl", 64, 48, "64", "0.02", 0.02]
    low, high = param.get("min"), param.get("max")
    if low is not None and high is not None:
        values += [low, high, (low + high) / 2, low - 1e-9, high * 2, low / 2, str(high)]
    values += list(param.get("choices") or [])
    return values


@pytest.mark.parametrize("preset", PRESETS)
def test_single_changes_agree_with_the_engine_on_the_real_schema(preset: str) -> None:
    state = _state(preset)
    checked = 0
    for param in state["search_space"]:
        for value in _candidates(dict(param)):
            changes = {param["name"]: value}
            try:
                apply_changes(state["config"], changes, frozen=FROZEN, preset=preset)
                engine_takes = True
            except ConfigError:
                engine_takes = False
            problems = proposal_problems(changes, state)
            assert (not problems) == engine_takes, (preset, changes, problems)
            checked += 1
    assert checked > 400


@pytest.mark.parametrize(("changes", "problem"), [
    ({}, "must change at least one parameter"),
    ({"DEPTH": 5}, "DEPTH is locked"),
    ({"FINAL_LR_FRAC": 0.1}, "FINAL_LR_FRAC is frozen"),
    ({"NOPE": 1}, "NOPE is not in the search space"),
    ({"MATRIX_LR": 2.0}, "MATRIX_LR must be between 0.001 and 1, got 2"),
    ({"MATRIX_LR": 0.01}, "MATRIX_LR is already 0.01; the change would do nothing"),
    ({"ADAM_BETAS": [0.8, 0.95]}, "ADAM_BETAS is already [0.8, 0.95]"),
    ({"WARMUP_RATIO": 0.3, "WARMDOWN_RATIO": 0.8}, "WARMUP_RATIO + WARMDOWN_RATIO must be at most 1"),
    ({"WINDOW_PATTERN": "SSSSL"}, "DEPTH is 4"),
    ({"HEAD_DIM": 48}, "HEAD_DIM must be a power of two"),
])
def test_each_refusal_says_why(changes: dict[str, Any], problem: str) -> None:
    state = _state("cpu-tiny")
    problems = proposal_problems(changes, state)
    assert any(problem in p for p in problems), problems
    with pytest.raises(ConfigError):
        apply_changes(state["config"], changes, frozen=FROZEN)


def test_a_restriction_in_force_refuses_other_parameters() -> None:
    state = _state("cpu-tiny")
    assert proposal_problems({"MATRIX_LR": 0.02}, state, allowed={"MATRIX_LR"}) == []
    assert proposal_problems({"WEIGHT_DECAY": 0.1}, state, allowed={"MATRIX_LR"}) == [
        "WEIGHT_DECAY is outside this iteration's restriction to MATRIX_LR"]


def test_a_search_space_other_than_the_trainers_is_judged_by_its_own_description() -> None:
    space = [{"name": "LR", "type": "float", "min": 0.1, "max": 0.2, "choices": None, "log": True, "locked": False,
              "default": 0.15, "description": ""},
             {"name": "KIND", "type": "enum", "min": None, "max": None, "choices": ["a", "b"], "log": False,
              "locked": False, "default": "a", "description": ""},
             {"name": "BLOCK", "type": "pow2", "min": None, "max": None, "choices": None, "log": False,
              "locked": False, "default": 4, "description": ""}]
    state = {**_state("cpu-tiny"), "search_space": space, "frozen": [], "config": {"LR": 0.15, "KIND": "a",
                                                                                   "BLOCK": 4}}
    assert proposal_problems({"LR": 0.12, "KIND": "b"}, state) == []  # type: ignore[arg-type]
    assert proposal_problems({"LR": 0.3}, state) == ["LR must be between 0.1 and 0.2, got 0.3"]  # type: ignore[arg-type]
    assert proposal_problems({"KIND": "c"}, state) == ["KIND must be one of 'a', 'b', got 'c'"]  # type: ignore[arg-type]
    assert proposal_problems({"BLOCK": 8}, state) == [  # type: ignore[arg-type]
        "the search space describes BLOCK without min, max"]


def test_describe_changes_shows_each_move_from_the_incumbent() -> None:
    assert describe_changes({"DEPTH": 5, "WINDOW_PATTERN": "SL"}, {"DEPTH": 4, "WINDOW_PATTERN": "SSSL"}) == \
        'DEPTH 4→5, WINDOW_PATTERN "SSSL"→"SL"'
