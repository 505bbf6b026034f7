"""MechanismRuntime: attribution, deactivation without silence, restart and replay equivalence."""

from __future__ import annotations

from mechanisms.protocol import MechanismSource, Result, proposal_of, result_of, state_before
from mechanisms.runtime import MechanismRuntime
from mechanisms.sandbox.host import MechanismHost
from tests.mechanisms_core.helpers import PARAMS, fixated_trace, record, source, state_for

NARROW = """
class Mechanism:
    def restrict(self, state):
        return ["MATRIX_LR", "DEPTH"]

    def prompt_sections(self, state):
        return "Focus on the learning rate."
"""

NO_OP = """
class Mechanism:
    def restrict(self, state):
        return ["MATRIX_LR", "DEPTH", "WARMDOWN_RATIO", "WEIGHT_DECAY"]

    def accept(self, result, state):
        return {"keep": result["status"] == "keep", "reason": "agrees"}

    def prompt_sections(self, state):
        return []
"""

ALWAYS_KEEP = """
class Mechanism:
    def accept(self, result, state):
        return {"keep": True, "reason": "optimism"}
"""

REJECT_DEPTH = """
class Mechanism:
    def filter(self, proposal, state):
        if "DEPTH" in proposal["changes"]:
            return {"reject": "depth is off limits"}
        return True
"""

BAD_TYPE = """
class Mechanism:
    def propose(self, state):
        return {"changes": "DEPTH=3"}
"""

CRASHES_HOST = """
import random
class Mechanism:
    def propose(self, state):
        random._os._exit(3)
"""

# Remembers every value it has seen discarded; proposes the first untried step of a ladder.
STATEFUL = """
class Mechanism:
    def __init__(self):
        self.tried = set()

    def on_result(self, record, state):
        for name, change in record["changes"].items():
            self.tried.add((name, repr(change["new"])))

    def propose(self, state):
        for value in (0.02, 0.04, 0.08, 0.16, 0.12, 0.03):
            if ("MATRIX_LR", repr(value)) not in self.tried:
                return {"changes": {"MATRIX_LR": value}, "hypothesis": "untried rate"}
        return None

    def filter(self, proposal, state):
        for name, value in proposal["changes"].items():
            if (name, repr(value)) in self.tried:
                return {"reject": name + " " + repr(value) + " was tried"}
        return None
"""


def _runtime(*mechanisms: MechanismSource, time_limit: float = 2.0) -> MechanismRuntime:
    trace = fixated_trace()
    return MechanismRuntime.start(list(mechanisms), trace, state_for(trace), time_limit_per_call=time_limit)


def test_attribution_counts_calls_and_only_changed_decisions() -> None:
    with _runtime(source(NARROW, "narrow"), source(NO_OP, "noop")) as runtime:
        state = state_for(runtime.trace)
        assert runtime.restrict(state, PARAMS) == {"MATRIX_LR", "DEPTH"}
        assert runtime.prompt_sections(state) == ["Focus on the learning rate."]
        result: Result = {"val_bpb": 2.7, "status": "discard", "changes": {}, "best_val_bpb": 2.6, "noise_sd": 0.01}
        assert runtime.accept(result, False, state) == (False, None, "")
        assert runtime.hook_calls == {"narrow": {"restrict": 1, "prompt_sections": 1},
                                      "noop": {"restrict": 1, "prompt_sections": 1, "accept": 1}}
        assert [(e["mechanism"], e["effect"]) for e in runtime.effects] == [("narrow", "restricted"),
                                                                            ("narrow", "prompt_added")]
        assert runtime.fired == {"narrow"}
        assert runtime.deactivated == []


def test_restriction_that_does_not_narrow_is_not_an_effect() -> None:
    with _runtime(source(NO_OP, "noop")) as runtime:
        assert runtime.restrict(state_for(runtime.trace), PARAMS) is None
        assert runtime.effects == []


def test_accept_override_and_filter_rejection_are_recorded() -> None:
    with _runtime(source(ALWAYS_KEEP, "keep"), source(REJECT_DEPTH, "nodepth")) as runtime:
        state = state_for(runtime.trace)
        result: Result = {"val_bpb": 2.7, "status": "discard", "changes": {"DEPTH": 5}, "best_val_bpb": 2.6,
                          "noise_sd": 0.01}
        assert runtime.accept(result, False, state) == (True, "keep", "optimism")
        crash: Result = {**result, "val_bpb": None, "status": "crash"}
        assert runtime.accept(crash, False, state) == (False, None, "")
        assert runtime.warnings[-1]["mechanism"] == "keep"
        accepted = runtime.filter({"changes": {"DEPTH": 5}, "hypothesis": ""}, state)
        assert accepted == (False, "depth is off limits", "nodepth")
        assert runtime.filter({"changes": {"MATRIX_LR": 0.1}, "hypothesis": ""}, state) == (True, None, None)
        assert [e["effect"] for e in runtime.effects] == ["acceptance_overridden", "proposal_rejected"]


def test_ill_typed_return_deactivates_and_the_iteration_goes_on() -> None:
    with _runtime(source(BAD_TYPE, "bad"), source(STATEFUL, "good")) as runtime:
        proposal, by = runtime.propose(state_for(runtime.trace))
        assert by == "good" and proposal is not None
        assert runtime.active == ["good"]
        assert runtime.deactivated[0]["mechanism"] == "bad"
        assert "bad_return" in runtime.deactivated[0]["reason"]


def test_a_dead_host_takes_down_only_its_own_mechanism() -> None:
    with _runtime(source(CRASHES_HOST, "crasher"), source(STATEFUL, "good")) as runtime:
        good_pid = runtime.hosts["good"].pid
        proposal, by = runtime.propose(state_for(runtime.trace))
        assert by == "good"
        assert proposal == {"changes": {"MATRIX_LR": 0.02}, "hypothesis": "untried rate"}
        assert list(runtime.hosts) == ["good"] and runtime.hosts["good"].pid == good_pid
        assert runtime.deactivated[0]["mechanism"] == "crasher"
        assert "crashed" in runtime.deactivated[0]["reason"]


def test_timeout_deactivates_only_the_hanging_mechanism() -> None:
    hang = "class Mechanism:\n    def prompt_sections(self, state):\n        while True:\n            pass\n"
    with _runtime(source(hang, "hang"), source(NARROW, "narrow"), time_limit=0.5) as runtime:
        assert runtime.prompt_sections(state_for(runtime.trace)) == ["Focus on the learning rate."]
        assert [d["mechanism"] for d in runtime.deactivated] == ["hang"]
        assert "timeout" in runtime.deactivated[0]["reason"]


def test_replay_equivalence_with_a_mechanism_that_lived_through_the_run() -> None:
    """Hooks called step by step on one host == replay-then-call on a fresh host, at every step."""
    trace = [*fixated_trace(), record(8, {"MATRIX_LR": (0.08, 0.02)}, 2.59, "keep"),
             record(9, {"DEPTH": (4, 3)}, None, "crash")]
    final_state = state_for(trace)
    lived = MechanismRuntime([source(STATEFUL)], state=state_before(final_state, trace, 0))
    try:
        for index, step in enumerate(trace):
            state = state_before(final_state, trace, index)
            with MechanismHost() as fresh_host:
                fresh_host.load([source(STATEFUL)])
                fresh_host.replay(trace[:index], state)
                assert lived.hosts["m"].call("m", "propose", state) == fresh_host.call("m", "propose", state)
                recorded = proposal_of(step)
                if recorded["changes"]:
                    assert lived.hosts["m"].call("m", "filter", recorded, state) == \
                        fresh_host.call("m", "filter", recorded, state)
            lived.observe(step, state)
        assert lived.hook_calls["m"]["on_result"] == len(trace)
    finally:
        lived.close()


def test_result_of_uses_recorded_status() -> None:
    step = record(3, {"DEPTH": (4, 3)}, 2.5, "keep")
    assert result_of(step, 2.6, 0.01) == {"val_bpb": 2.5, "status": "keep", "changes": {"DEPTH": 3},
                                          "best_val_bpb": 2.6, "noise_sd": 0.01}


def test_hang_at_import_time_deactivates_only_that_mechanism() -> None:
    hang = "while len('x') == 1:\n    pass\nclass Mechanism:\n    def propose(self, state):\n        return None\n"
    with _runtime(source(hang, "hangs_on_load"), source(NARROW, "narrow"), time_limit=0.5) as runtime:
        assert runtime.active == ["narrow"]
        assert runtime.deactivated[0]["mechanism"] == "hangs_on_load"
        assert runtime.deactivated[0]["hook"] == "load" and "timeout" in runtime.deactivated[0]["reason"]
        assert runtime.restrict(state_for(runtime.trace), PARAMS) == {"MATRIX_LR", "DEPTH"}


def test_replay_calls_are_counted_apart_from_live_calls() -> None:
    with _runtime(source(STATEFUL, "good")) as runtime:
        # The newest record is seen for the first time (a live call); the rest is replay.
        assert runtime.replay_calls == {"good": len(runtime.trace) - 1}
        assert runtime.hook_calls == {"good": {"on_result": 1}}
        runtime.observe(record(8, {"DEPTH": (4, 5)}, 2.7, "discard"), state_for(runtime.trace))
        assert runtime.hook_calls == {"good": {"on_result": 2}}
