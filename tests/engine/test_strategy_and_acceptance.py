"""Level 1.5's freeze rule on synthetic traces, and the acceptance policies."""

from __future__ import annotations

from typing import Any

from runs.engine import acceptance
from runs.engine.strategy import freeze_rule
from trainer.schema import schema_json

SPACE = schema_json("cpu-tiny")


def record(iteration: int, changes: dict[str, Any], status: str, value: float | None, best: float) -> dict[str, Any]:
    return {
        "iteration": iteration,
        "kind": "proposal",
        "status": status,
        "val_bpb": value,
        "best_before": best,
        "changes": {name: {"old": old, "new": new} for name, (old, new) in changes.items()},
        "failure_class": "",
        "hypothesis": "",
        "proposal_source": "agent",
    }


def baseline() -> dict[str, Any]:
    return {
        "iteration": 0,
        "kind": "baseline",
        "status": "baseline",
        "val_bpb": 2.5,
        "best_before": None,
        "changes": {},
        "failure_class": "",
        "hypothesis": "baseline",
        "proposal_source": "",
    }


def test_freezes_exactly_the_parameters_tried_three_times_without_gain() -> None:
    trace = [
        baseline(),
        record(1, {"MATRIX_LR": (0.02, 0.03)}, "discard", 2.55, 2.5),
        record(2, {"MATRIX_LR": (0.02, 0.01)}, "discard", 2.6, 2.5),
        record(3, {"WEIGHT_DECAY": (0.0, 0.1)}, "keep", 2.45, 2.5),
        record(4, {"MATRIX_LR": (0.02, 0.04), "SCALAR_LR": (0.5, 0.7)}, "discard", 2.5, 2.45),
        record(5, {"SCALAR_LR": (0.5, 0.3)}, "discard", 2.47, 2.45),
        record(6, {"WEIGHT_DECAY": (0.1, 0.2)}, "discard", 2.46, 2.45),
        record(7, {"WEIGHT_DECAY": (0.1, 0.05)}, "discard", 2.46, 2.45),
    ]
    decision = freeze_rule(trace, SPACE, history=[])

    # MATRIX_LR: 3 tries, no keep → frozen. WEIGHT_DECAY: 3 tries but one kept (+0.05) → active.
    # SCALAR_LR: only 2 tries → active.
    assert decision.newly_frozen == ["MATRIX_LR"]
    assert decision.frozen == ["MATRIX_LR"]
    assert decision.unfrozen == []
    assert "3 times" in decision.reasons["MATRIX_LR"]
    assert decision.per_parameter["WEIGHT_DECAY"]["keeps"] == 1


def test_unfreezes_after_the_search_moves_and_respects_the_minimum_active_cap() -> None:
    trace = [baseline(), record(1, {"MATRIX_LR": (0.02, 0.03)}, "discard", 2.6, 2.5)]
    history = [{"after_iteration": 1, "frozen": ["MATRIX_LR"], "newly_frozen": ["MATRIX_LR"], "unfrozen": []}]
    trace.append(record(2, {"WEIGHT_DECAY": (0.0, 0.1)}, "keep", 2.4, 2.5))
    decision = freeze_rule(trace, SPACE, history)
    assert decision.unfrozen == ["MATRIX_LR"]
    assert decision.frozen == []

    changeable = [k["name"] for k in SPACE if not k["locked"]]
    many = [baseline()]
    for i, name in enumerate(changeable * 3, start=1):
        many.append(record(i, {name: (1, 2)}, "discard", 2.6, 2.5))
    capped = freeze_rule(many, SPACE, history=[], min_active=4)
    assert len(changeable) - len(capped.frozen) == 4
    assert any("must stay active" in reason for reason in capped.reasons.values())


def test_strict_policy_is_the_papers_rule() -> None:
    assert acceptance.first_verdict("strict", 2.4999, 2.5, 0.01, 2.0).keep
    assert not acceptance.first_verdict("strict", 2.5, 2.5, 0.01, 2.0).keep


def test_noise_aware_policy_needs_a_gain_beyond_k_sigma_and_a_confirming_reevaluation() -> None:
    within_noise = acceptance.first_verdict("noise_aware", 2.49, 2.5, 0.01, 2.0)
    assert not within_noise.keep and not within_noise.needs_reevaluation

    candidate = acceptance.first_verdict("noise_aware", 2.47, 2.5, 0.01, 2.0)
    assert candidate.needs_reevaluation

    confirmed = acceptance.final_verdict([2.47, 2.48], 2.5, 0.01, 2.0)  # gain 0.025 > 2·0.01/√2
    assert confirmed.keep
    refuted = acceptance.final_verdict([2.47, 2.52], 2.5, 0.01, 2.0)  # gain 0.005
    assert not refuted.keep


def test_sample_sd() -> None:
    assert acceptance.sample_sd([1.0]) is None
    assert abs((acceptance.sample_sd([1.0, 2.0, 3.0]) or 0) - 1.0) < 1e-12
