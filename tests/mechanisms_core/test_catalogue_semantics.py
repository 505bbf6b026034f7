"""Hook semantics of the catalogue mechanisms on synthetic traces, through the runtime."""

from __future__ import annotations

from mechanisms.catalogue import catalogue_entries
from mechanisms.protocol import MechanismSource, Result
from mechanisms.runtime import MechanismRuntime
from tests.mechanisms_core.helpers import PARAMS, fixated_trace, record, state_for


def _catalogue(name: str) -> MechanismSource:
    entry = next(e for e in catalogue_entries() if e.name == name)
    return {"name": entry.name, "class_name": entry.class_name, "code": entry.code}


def test_bandit_restricts_to_untried_arms_then_to_the_best() -> None:
    trace = fixated_trace()  # MATRIX_LR tried 7 times (1 keep); the other three never
    with MechanismRuntime.start([_catalogue("parameter_bandit")], trace, state_for(trace)) as runtime:
        allowed = runtime.restrict(state_for(trace), PARAMS)
        assert allowed == {"DEPTH", "WARMDOWN_RATIO", "WEIGHT_DECAY"}
        assert "never tried" in runtime.prompt_sections(state_for(trace))[0]
        assert [e["effect"] for e in runtime.effects] == ["restricted", "prompt_added"]


def test_noise_aware_acceptance_overrides_a_within_noise_keep() -> None:
    trace = fixated_trace()
    state = state_for(trace, noise_sd=0.01)
    with MechanismRuntime.start([_catalogue("noise_aware_acceptance")], trace, state) as runtime:
        tiny_gain: Result = {"val_bpb": 2.595, "status": "keep", "changes": {"DEPTH": 3}, "best_val_bpb": 2.60,
                             "noise_sd": 0.01}
        keep, by, reason = runtime.accept(tiny_gain, True, state)
        assert (keep, by) == (False, "noise_aware_acceptance") and "below 1 sigma" in reason
        clear_gain: Result = {**tiny_gain, "val_bpb": 2.55}
        assert runtime.accept(clear_gain, True, state) == (True, None, "")
        assert len(runtime.effects) == 1


def test_coordinate_exploration_proposes_an_untested_coordinate_when_fixated() -> None:
    trace = fixated_trace()
    state = state_for(trace)
    with MechanismRuntime.start([_catalogue("coordinate_exploration")], trace, state) as runtime:
        proposal, by = runtime.propose(state)
        assert by == "coordinate_exploration" and proposal is not None
        assert proposal["changes"] == {"DEPTH": 5}  # least tested, first in schema order, one step up
    varied = [*trace[:3], record(3, {"DEPTH": (4, 3)}, 2.7, "discard")]
    with MechanismRuntime.start([_catalogue("coordinate_exploration")], varied, state_for(varied)) as runtime:
        assert runtime.propose(state_for(varied)) == (None, None)


def test_tabu_filter_in_runtime() -> None:
    trace = fixated_trace()
    with MechanismRuntime.start([_catalogue("tabu")], trace, state_for(trace)) as runtime:
        state = state_for(trace)
        accepted, reason, by = runtime.filter({"changes": {"MATRIX_LR": 0.16}, "hypothesis": ""}, state)
        assert (accepted, by) == (False, "tabu") and reason is not None and "MATRIX_LR=0.16" in reason
        assert runtime.filter({"changes": {"MATRIX_LR": 0.05}, "hypothesis": ""}, state) == (True, None, None)
