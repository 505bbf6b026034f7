"""Kernel isolation of generated code: every class of escape, zero escapes.

Each attack in ``attacks.py`` is run four ways, and each time the test looks for its effect
where it would show, never at the attack's own say-so: no file or FIFO appears (host /tmp,
/dev/shm, the project, the host's temp dir), no program runs, a listener started here sees no
connection, the canary variable and the project's files appear in no output, another run's host
and a process of the same user survive.

1. kernel only: the host's Python guards switched off, so the kernel is the only barrier;
2. the whole host (guards on), static check bypassed;
3. through the validation ladder (the attacks pass the static check);
4. kernel only, started by an unprivileged user (how most people run it).

``python -m tests.mechanisms_core.test_isolation`` prints the table kept in mechanisms/ISOLATION.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mechanisms.protocol import state_before
from mechanisms.runtime import MechanismRuntime
from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost, isolation_status
from mechanisms.validation.ladder import LadderReport, recorded_fixtures, validate_mechanism
from mechanisms.validation.static_check import static_check
from tests.mechanisms_core.attacks import ATTACKS, DEEP_RETURN, FORGED_REPLIES, INNOCENT, Attack, supported
from tests.mechanisms_core.helpers import fixated_trace, source, state_for

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = "BILEVEL_CANARY_SECRET"
SECRET_VALUE = "canary-" + uuid.uuid4().hex
PROJECT_FILE = ROOT / "bilevel_site" / "settings.py"
KILLED_BY_KERNEL = "the kernel killed the host"
UNPRIVILEGED = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
# Classes whose first forbidden system call must end the host (seccomp), whatever else holds.
KERNEL_KILLS = {"processes", "network", "signals", "tracing", "kernel attack surface"}
SUPPORTED = [attack for attack in ATTACKS if supported(attack)]


@dataclass
class World:
    """What an escape would change, and where to look for it."""

    targets: dict[str, Any]
    listener: socket.socket
    unix_listener: socket.socket
    victim: MechanismHost
    sleeper: subprocess.Popen[bytes]
    leaks: list[str] = field(default_factory=list)

    def created(self) -> list[str]:
        paths = [*self.targets["files"], *(p + ".b" for p in self.targets["files"]), *self.targets["fifos"],
                 self.targets["exec_marker"]]
        return [path for path in paths if os.path.lexists(path)]

    def connections(self) -> list[str]:
        seen = []
        for listener in (self.listener, self.unix_listener):
            try:
                connection, address = listener.accept()
            except BlockingIOError:
                continue
            connection.close()
            seen.append(repr(address))
        return seen

    def assert_untouched(self, *outputs: str) -> None:
        assert self.created() == [], "files appeared outside the sandbox"
        assert self.connections() == [], "a listener outside the sandbox was reached"
        assert self.sleeper.poll() is None, "a process of the same user was killed"
        self.victim.ping()  # another run's host still answers
        for text in outputs:
            for leak in self.leaks:
                assert leak not in text, f"leaked: {leak[:40]}"


def _targets(token: str, unix_path: str, port: int, victims: list[int]) -> dict[str, Any]:
    return {
        "files": [f"/tmp/bilevel-escape-{token}", f"/dev/shm/bilevel-escape-{token}",
                  str(ROOT / f"bilevel-escape-{token}"), str(Path(tempfile.gettempdir()) / f"bilevel-host-{token}")],
        "fifos": [f"/tmp/bilevel-fifo-{token}", str(ROOT / f"bilevel-fifo-{token}")],
        "exec_marker": f"/tmp/bilevel-exec-{token}",
        "port": port, "unix_socket": unix_path, "victims": victims,
        "project_file": str(PROJECT_FILE), "database": str(ROOT / "var" / "bilevel.sqlite3"),
        "secret_name": SECRET_NAME,
    }


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_NAME, SECRET_VALUE)
    token = uuid.uuid4().hex
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    unix_path = f"/tmp/bilevel-socket-{token}"
    unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_listener.bind(unix_path)
    unix_listener.listen()
    unix_listener.setblocking(False)
    sleeper = subprocess.Popen(["sleep", "600"])
    victim = MechanismHost()
    victim.load([source(INNOCENT, "victim")])
    targets = _targets(token, unix_path, listener.getsockname()[1], [victim.pid, sleeper.pid, os.getpid()])
    world = World(targets, listener, unix_listener, victim, sleeper,
                  leaks=[SECRET_VALUE, PROJECT_FILE.read_text()[:80], "root:x:0:0"])
    try:
        yield world
    finally:
        victim.close()
        sleeper.kill()
        sleeper.wait()
        listener.close()
        unix_listener.close()
        for path in [*world.created(), unix_path]:
            Path(path).unlink(missing_ok=True)


def run_attack(attack: Attack, targets: dict[str, Any], python_guards: bool) -> tuple[str, str]:
    """(outcome kind, detail) of one attack loaded straight into a host."""
    try:
        with MechanismHost(time_limit_per_call=5.0, python_guards=python_guards) as host:
            report = host.load([source(attack.code(targets))])
            if "m" in report["errors"]:
                return "load_error", report["errors"]["m"].strip().splitlines()[-1]
            return "returned", json.dumps(host.call("m", "propose", {}))
    except MechanismCallError as error:
        return error.kind, str(error).strip().splitlines()[-1]
    except HostError as error:
        return error.kind, str(error)


def test_isolation_is_available_here() -> None:
    """CI installs bubblewrap: the suite below must not pass by refusing to start at all."""
    status = isolation_status(refresh=True)
    assert status.available, status.reason


@pytest.mark.parametrize("attack", SUPPORTED, ids=[a.name for a in SUPPORTED])
def test_kernel_alone_contains(attack: Attack, world: World) -> None:
    kind, detail = run_attack(attack, world.targets, python_guards=False)
    world.assert_untouched(detail)
    if attack.escape_class in KERNEL_KILLS or attack.name.startswith("make a FIFO"):
        assert kind == "crashed" and KILLED_BY_KERNEL in detail, (kind, detail)


@pytest.mark.parametrize("attack", SUPPORTED, ids=[a.name for a in SUPPORTED])
def test_whole_host_contains(attack: Attack, world: World) -> None:
    kind, detail = run_attack(attack, world.targets, python_guards=True)
    world.assert_untouched(detail)
    # With the Python guards on top, every attack is also refused outright, with the reason.
    assert kind in ("forbidden", "crashed", "load_error"), (kind, detail)
    assert "refused" in detail or "not allowed" in detail or KILLED_BY_KERNEL in detail, detail


def _spec(name: str) -> dict[str, Any]:
    return {"name": name, "class_name": "Mechanism", "hooks": ["propose"], "rationale": "explore",
            "state_kept": "nothing", "expected_effect": "better proposals"}


@pytest.mark.parametrize("attack", SUPPORTED, ids=[a.name for a in SUPPORTED])
def test_ladder_contains(attack: Attack, world: World) -> None:
    """The attacks pass the static check (a lint, not the barrier), so the sandboxed rungs meet them."""
    assert static_check(attack.code(world.targets), "Mechanism") == []
    report = validate_mechanism(_spec("attack"), attack.code(world.targets), recorded_fixtures()[:1])
    world.assert_untouched(json.dumps(report.to_json()))
    rung, reason = _rung(report)
    assert rung in ("import", "dry_run"), report.steps
    assert reason.strip(), "a refusal without a reason a reviewer can read"


def _rung(report: LadderReport) -> tuple[str, str]:
    failed = report.failed_step
    return (failed["step"], failed["detail"]) if failed else ("passed", report.steps[-1]["detail"])


def test_deep_reply_is_refused_and_forged_replies_are_credited_to_no_one() -> None:
    trace = fixated_trace()
    state = state_for(trace)
    attacker = source(FORGED_REPLIES.format(targets=json.dumps({}), depth=900), "attacker")
    mechanisms = [attacker, source(DEEP_RETURN, "deep"), source(INNOCENT, "innocent")]
    with MechanismRuntime.start(mechanisms, trace, state) as runtime:
        result = {"val_bpb": 2.7, "status": "discard", "changes": {"MATRIX_LR": 0.05}, "best_val_bpb": 2.6,
                  "noise_sd": None}
        keep, by, _reason = runtime.accept(result, False, state_before(state, trace, len(trace)))  # type: ignore[arg-type]
        assert (keep, by) == (False, None)
        assert runtime.active == ["innocent"]
        reasons = {d["mechanism"]: d["reason"] for d in runtime.deactivated}
        assert "protocol" in reasons["attacker"], reasons
        assert "bad_return" in reasons["deep"] and "not JSON" in reasons["deep"], reasons
        assert [e for e in runtime.effects if e["effect"] == "acceptance_overridden"] == []
        assert runtime.prompt_sections(state) == ["innocent guidance"]
        assert {e["mechanism"] for e in runtime.effects} == {"innocent"}


def test_a_deeply_nested_reply_line_never_raises_into_the_caller() -> None:
    attacker = FORGED_REPLIES.format(targets=json.dumps({}), depth=100_000)
    with MechanismHost(time_limit_per_call=5.0, python_guards=False) as host:
        host.load([source(attacker, "attacker")])
        with pytest.raises(HostError) as raised:
            host.call("attacker", "accept", {}, {})
    assert raised.value.kind == "protocol" and raised.value.mechanism == "attacker"


def _copy_for_unprivileged(into: Path) -> None:
    import pyseccomp

    (into / "mechanisms" / "sandbox").mkdir(parents=True)
    for name in ("__init__.py", "protocol.py", "sandbox/__init__.py", "sandbox/isolation.py", "sandbox/host.py",
                 "sandbox/host_child.py"):
        shutil.copy(ROOT / "mechanisms" / name, into / "mechanisms" / name)
    shutil.copy(ROOT / "tests" / "mechanisms_core" / "attacks.py", into / "attacks.py")
    shutil.copy(ROOT / "tests" / "mechanisms_core" / "unprivileged_driver.py", into / "driver.py")
    shutil.copy(pyseccomp.__file__, into / "pyseccomp.py")  # a single-module distribution
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root (the suite runs as root in CI)")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs the system Python 3.11 (Debian python3.11)")
def test_unprivileged_user_kernel_alone_contains(world: World) -> None:
    sleeper = subprocess.Popen(["sleep", "600"], user=UNPRIVILEGED, group=UNPRIVILEGED, extra_groups=[])
    with tempfile.TemporaryDirectory(prefix="bilevel-unprivileged-") as directory:
        Path(directory).chmod(0o755)
        _copy_for_unprivileged(Path(directory))
        targets = {**world.targets, "victims": [*world.targets["victims"], sleeper.pid]}
        try:
            finished = subprocess.run(
                [str(SYSTEM_PYTHON), "-I", "-S", f"{directory}/driver.py", directory],
                input=json.dumps({"targets": targets}), capture_output=True, text=True, timeout=300,
                user=UNPRIVILEGED, group=UNPRIVILEGED, extra_groups=[], cwd=directory,
                env={"PATH": "/usr/bin:/bin", SECRET_NAME: SECRET_VALUE},
            )
            assert sleeper.poll() is None, "an unprivileged attack killed a process of its own user"
        finally:
            sleeper.kill()
            sleeper.wait()
    assert finished.returncode == 0, finished.stderr[-3000:]
    outcomes = json.loads(finished.stdout)
    world.assert_untouched(finished.stdout)
    by_name = {o["name"]: o for o in outcomes}
    assert by_name["victim host"]["kind"] == "alive"
    for attack in SUPPORTED:
        outcome = by_name[attack.name]
        if attack.escape_class in KERNEL_KILLS:
            assert outcome["kind"] == "crashed" and KILLED_BY_KERNEL in outcome["detail"], outcome


def _table() -> str:
    """case -> what stopped it in each mode -> the reason a reviewer reads."""
    rows = ["| case | class | kernel only | whole host | ladder: rung | ladder: reason |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as directory:
        targets = _targets("table", f"{directory}/socket", 9, [os.getpid()])
        for attack in SUPPORTED:
            kernel = run_attack(attack, targets, python_guards=False)
            host = run_attack(attack, targets, python_guards=True)
            rung, reason = _rung(validate_mechanism(_spec("attack"), attack.code(targets), recorded_fixtures()[:1]))

            def cell(outcome: tuple[str, str]) -> str:
                return f"{outcome[0]}: {outcome[1][:110]}".replace("|", "/").replace("\n", " ")

            rows.append(f"| {attack.name} | {attack.escape_class} | {cell(kernel)} | {cell(host)} | {rung} | "
                        f"{reason[:160].replace('|', '/').replace(chr(10), ' ')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(_table() + "\n")
