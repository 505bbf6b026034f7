"""The mechanism host process: protocol, isolation layers, failures and clean-up."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mechanisms.protocol import state_before
from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost
from tests.mechanisms_core.helpers import fixated_trace, source, state_for

COUNTER = """
class Mechanism:
    def __init__(self):
        self.seen = []

    def on_result(self, record, state):
        self.seen.append({"iteration": state["iteration"], "trace_len": len(state["trace"]), "best": state["best"]})

    def propose(self, state):
        return {"changes": {"DEPTH": len(self.seen)}, "hypothesis": "count"}

    def restrict(self, state):
        return self.seen
"""


@pytest.fixture
def host() -> Iterator[MechanismHost]:
    with MechanismHost(time_limit_per_call=2.0) as started:
        yield started


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_isolation_layers_reported(host: MechanismHost) -> None:
    layers = " ".join(host.isolation)
    for layer in ("user-namespace", "pid-namespace", "net-namespace", "seccomp", "rlimits", "empty environment",
                  "python guards"):
        assert layer in layers
    host.ping()


def test_load_reports_hooks_and_errors(host: MechanismHost) -> None:
    report = host.load([source(COUNTER)])
    assert report == {"loaded": {"m": ["on_result", "restrict", "propose"]}, "errors": {}}
    with pytest.raises(HostError, match="loaded once per host"):
        host.load([source(COUNTER)])
    for code, expected in (("raise ValueError('at import')", "ValueError: at import"),
                           ("x = 1", "no class named 'Mechanism'")):
        with MechanismHost() as other:
            assert expected in other.load([source(code, name="broken")])["errors"]["broken"]


def test_one_mechanism_per_host(host: MechanismHost) -> None:
    with pytest.raises(ValueError, match="exactly one mechanism"):
        host.load([source(COUNTER), source(COUNTER, name="other")])


def test_replay_rewinds_state_like_protocol_state_before(host: MechanismHost) -> None:
    trace = fixated_trace()
    state = state_for(trace)
    host.load([source(COUNTER)])
    report = host.replay(trace, state)
    assert report == {"calls": len(trace), "errors": {}}
    seen = host.call("m", "restrict", state)
    expected = [
        {"iteration": s["iteration"], "trace_len": len(s["trace"]), "best": s["best"]}
        for s in (state_before(state, trace, i) for i in range(len(trace)))
    ]
    assert seen == expected


def test_call_errors_keep_the_host_alive(host: MechanismHost) -> None:
    host.load([source("class Mechanism:\n    def propose(self, state):\n        return 1 / 0\n")])
    with pytest.raises(MechanismCallError) as raised:
        host.call("m", "propose", {})
    assert raised.value.kind == "exception" and "ZeroDivisionError" in str(raised.value)
    with pytest.raises(MechanismCallError) as missing:
        host.call("m", "filter", {}, {})
    assert missing.value.kind == "missing_hook"
    host.ping()


def test_timeout_kills_the_process_group() -> None:
    with MechanismHost(time_limit_per_call=0.5) as host:
        host.load([source("class Mechanism:\n    def propose(self, state):\n        while True:\n            pass\n")])
        with pytest.raises(HostError) as raised:
            host.call("m", "propose", {})
        assert raised.value.kind == "timeout"
        assert (raised.value.mechanism, raised.value.hook) == ("m", "propose")
        assert not host.alive
        assert not _group_exists(host.pid)
        with pytest.raises(HostError, match="not running"):
            host.ping()


def test_replay_timeout_names_the_mechanism() -> None:
    hang = "class Mechanism:\n    def on_result(self, record, state):\n        while record['iteration'] == 3:\n" \
           "            pass\n"
    with MechanismHost(time_limit_per_call=0.5) as host:
        host.load([source(hang, name="hangs")])
        with pytest.raises(HostError) as raised:
            host.replay(fixated_trace(), state_for(fixated_trace()))
        assert (raised.value.kind, raised.value.mechanism, raised.value.hook) == ("timeout", "hangs", "on_result")


def test_close_removes_process_group() -> None:
    host = MechanismHost()
    assert _group_exists(host.pid)
    host.close()
    host.close()
    assert not _group_exists(host.pid)
