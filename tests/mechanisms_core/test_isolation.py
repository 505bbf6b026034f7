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

Round two (issue 25), each as root and through the unprivileged driver: every path the host can
see is tampered with and compared from outside (mode, owner, ctime, content digest); a host that
writes its own reply and keeps computing is measured from /proc while the parent is not waiting
on it; a forged "notice" a mechanism writes reaches the reviewer only quoted, after the system's
finding; the seccomp filter meets an ioctl request with high bits set; the step's wait on one host
is capped; a host that dies after its last call is noticed at the end of the step.

``python -m tests.mechanisms_core.test_isolation`` prints the table kept in mechanisms/ISOLATION.md.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
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
from mechanisms.sandbox import isolation
from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost, isolation_status
from mechanisms.text import MECHANISM_WORDS_LABEL
from mechanisms.validation.ladder import LadderReport, recorded_fixtures, validate_mechanism
from mechanisms.validation.static_check import static_check
from tests.mechanisms_core.attacks import (
    ATTACKS,
    DEEP_RETURN,
    DIES_AFTER_ITS_REPLY,
    FORGED_NOTICE,
    FORGED_REPLIES,
    INNOCENT,
    KEEPS_RUNNING_AFTER_ITS_REPLY,
    NOTICE_AS_EXCEPTION,
    NOTICE_AT_LOAD,
    NOTICE_ON_STDERR_THEN_EXIT,
    TAMPER_EVERY_PATH,
    Attack,
    supported,
)
from tests.mechanisms_core.helpers import fixated_trace, record, source, state_for
from tests.mechanisms_core.unprivileged_driver import between_calls, gone, tamper

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
                 "sandbox/host_child.py", "text.py"):
        shutil.copy(ROOT / "mechanisms" / name, into / "mechanisms" / name)
    shutil.copy(ROOT / "tests" / "mechanisms_core" / "attacks.py", into / "attacks.py")
    shutil.copy(ROOT / "tests" / "mechanisms_core" / "unprivileged_driver.py", into / "driver.py")
    shutil.copy(pyseccomp.__file__, into / "pyseccomp.py")  # a single-module distribution
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _as_unprivileged_user(request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run the driver as the unprivileged user from a copy of the modules it needs."""
    with tempfile.TemporaryDirectory(prefix="bilevel-unprivileged-") as directory:
        Path(directory).chmod(0o755)
        _copy_for_unprivileged(Path(directory))
        return subprocess.run(
            [str(SYSTEM_PYTHON), "-I", "-S", f"{directory}/driver.py", directory],
            input=json.dumps(request), capture_output=True, text=True, timeout=300,
            user=UNPRIVILEGED, group=UNPRIVILEGED, extra_groups=[], cwd=directory,
            env={"PATH": "/usr/bin:/bin", SECRET_NAME: SECRET_VALUE},
        )


needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="dropping to another user needs root (the suite runs as root in CI)")
needs_system_python = pytest.mark.skipif(not SYSTEM_PYTHON.exists(),
                                         reason="needs the system Python 3.11 (Debian python3.11)")


@needs_root
@needs_system_python
def test_unprivileged_user_kernel_alone_contains(world: World) -> None:
    sleeper = subprocess.Popen(["sleep", "600"], user=UNPRIVILEGED, group=UNPRIVILEGED, extra_groups=[])
    targets = {**world.targets, "victims": [*world.targets["victims"], sleeper.pid]}
    try:
        finished = _as_unprivileged_user({"targets": targets})
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


# -- round two ------------------------------------------------------------------------------------

Snapshot = dict[str, tuple[int, int, int, int, int, str]]


def _visible_host_paths() -> list[str]:
    """Every host path bound into a sandbox: the runtime, its libraries and the three device nodes."""
    runtime = isolation.runtime()
    roots = [runtime.interpreter, runtime.stdlib, *([runtime.dynload] if runtime.dynload else []),
             *(os.path.realpath(library) for library in isolation.shared_libraries()),
             "/dev/null", "/dev/zero", "/dev/urandom"]
    paths: list[str] = []
    for root in roots:
        paths.append(root)
        if os.path.isdir(root) and not os.path.islink(root):
            for directory, names, files in os.walk(root):
                paths += [os.path.join(directory, name) for name in [*names, *files]]
    return sorted(set(paths))


def _snapshot(paths: list[str]) -> Snapshot:
    """(mode, uid, gid, ctime, mtime, content digest) of each path, seen from the host."""
    taken: Snapshot = {}
    for path in paths:
        info = os.lstat(path)
        digest = ""
        if stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        taken[path] = (info.st_mode, info.st_uid, info.st_gid, info.st_ctime_ns, info.st_mtime_ns, digest)
    return taken


def _changed(before: Snapshot, after: Snapshot) -> list[str]:
    return [path for path in before if before[path] != after.get(path)]


def _assert_tamper_contained(outcome: dict[str, Any], before: Snapshot, paths: list[str]) -> None:
    assert _changed(before, _snapshot(paths)) == [], "a path bound into the sandbox changed on the host"
    identity = outcome["identity"]
    assert 0 not in identity["uids"] + identity["gids"] + identity["groups"], identity
    assert identity["cap_eff"] == 0, identity
    # Zero writable inodes: nothing is mounted writable but the device nodes (which are not directories).
    assert set(outcome["writable_mounts"]) <= {"/dev/null", "/dev/zero", "/dev/urandom"}, outcome
    # The walk really went over the bound tree (it is not a test that passes by seeing nothing).
    assert int(outcome["said"].split()[0]) > 500, outcome["said"]


def test_root_parent_host_cannot_change_any_host_path() -> None:
    """As root, the sandbox user once mapped to root and chmod changed the real /dev/null."""
    paths = _visible_host_paths()
    before = _snapshot(paths)
    _assert_tamper_contained(tamper(TAMPER_EVERY_PATH), before, paths)


def _assert_held_between_calls(outcome: dict[str, Any]) -> None:
    assert outcome["reply"] is None  # the forged reply reached the parent
    assert outcome["cpu_ms_between_calls"] < 5, outcome  # the kernel's count, while the parent waited on nothing
    assert outcome["state_between_calls"] == "T", outcome  # stopped, not merely idle
    assert outcome["next_call"] == "outside_call", outcome
    assert "ms of CPU" in outcome["finding"] and outcome["host_gone"], outcome


def test_a_host_never_computes_between_calls() -> None:
    _assert_held_between_calls(between_calls(KEEPS_RUNNING_AFTER_ITS_REPLY))


@needs_root
@needs_system_python
def test_unprivileged_parent_round_two() -> None:
    """The same two checks with the parent an unprivileged user (the host maps to that user)."""
    paths = _visible_host_paths()
    before = _snapshot(paths)
    finished = _as_unprivileged_user({"round_two": True})
    assert finished.returncode == 0, finished.stderr[-3000:]
    outcome = json.loads(finished.stdout)
    _assert_tamper_contained(outcome["tamper"], before, paths)
    assert UNPRIVILEGED in outcome["tamper"]["identity"]["uids"]
    _assert_held_between_calls(outcome["between_calls"])


def test_the_step_ends_with_hosts_that_ran_or_died_after_their_last_call_deactivated() -> None:
    trace = fixated_trace()
    state = state_for(trace)
    mechanisms = [source(KEEPS_RUNNING_AFTER_ITS_REPLY, "runner"), source(DIES_AFTER_ITS_REPLY, "dier"),
                  source(INNOCENT, "innocent")]
    with MechanismRuntime.start(mechanisms, trace, state,
                                host_factory=lambda: MechanismHost(python_guards=False, wait=False)) as runtime:
        assert runtime.propose(state) == (None, None)  # both forged "no proposal" and went on
        pids = {name: runtime.hosts[name].host_pid for name in ("runner", "dier")}
        runtime.check_hosts()
        assert runtime.active == ["innocent"]
        found = {d["mechanism"]: d for d in runtime.deactivated}
        assert found["runner"]["kind"] == "outside_call" and "ms of CPU" in found["runner"]["reason"]
        # Whether the stop caught it alive or it was already gone, it died outside any call.
        assert found["dier"]["kind"] == "crashed" and "outside any call" in found["dier"]["reason"]
        assert all(gone(pid) for pid in pids.values() if pid is not None)


def _system_part(reason: str) -> str:
    return reason.split(MECHANISM_WORDS_LABEL, 1)[0]


def _quoted_part(reason: str) -> str:
    """The mechanism's words: one JSON string literal right after the label."""
    literal = reason.split(MECHANISM_WORDS_LABEL + ": ", 1)[1]
    decoded, _end = json.JSONDecoder().raw_decode(literal)
    assert isinstance(decoded, str)
    return decoded


@pytest.mark.parametrize("code", [NOTICE_ON_STDERR_THEN_EXIT, NOTICE_AS_EXCEPTION, NOTICE_AT_LOAD],
                         ids=["stderr and exit 137", "exception text", "load failure"])
def test_a_mechanism_cannot_write_the_reason_a_reviewer_reads(code: str) -> None:
    trace = fixated_trace()
    state = state_for(trace)
    with MechanismRuntime.start([source(code, "forger"), source(INNOCENT, "innocent")], trace, state) as runtime:
        runtime.propose(state)
        runtime.check_hosts()
    reason = next(d["reason"] for d in runtime.deactivated if d["mechanism"] == "forger")
    system = _system_part(reason)
    for fragment in ("INFRASTRUCTURE", "healthy", "re-activate", "security team"):
        assert fragment not in system, reason
    assert system.strip(), "the system's own finding comes first"
    assert "INFRASTRUCTURE NOTICE" in _quoted_part(reason)
    assert "\\n" in reason.split(MECHANISM_WORDS_LABEL, 1)[1] and FORGED_NOTICE not in reason  # one escaped line


def _ioctl_errno_under_filter(request: int) -> int:
    """errno of ioctl(/dev/null, request) in a child that installed the host's seccomp start filter."""
    program = isolation.seccomp_programs()[0]
    code = (
        "import ctypes, fcntl, os, sys\n"
        "from mechanisms.sandbox.host_child import lock_down\n"
        f"lock_down(bytes.fromhex({program.hex()!r}))\n"
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"result = libc.ioctl(fd, ctypes.c_ulong({request}), ctypes.c_char_p(b'x'))\n"
        "print(ctypes.get_errno() if result != 0 else 0)\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                              check=False)
    assert finished.returncode == 0, finished.stderr
    return int(finished.stdout)


@pytest.mark.parametrize("request_number", [0x5412, 0x100005412, 0xFFFFFFFF00005412, 0x541C, 0x10000541C])
def test_terminal_injection_ioctls_are_refused_whatever_the_high_bits(request_number: int) -> None:
    """The kernel reads the request as 32 bits; the filter must too (EPERM, not ENOTTY from the device)."""
    assert _ioctl_errno_under_filter(request_number) == errno.EPERM
    assert ctypes.sizeof(ctypes.c_ulong) == 8


SLOW_REPLAY = """
class Mechanism:
    def on_result(self, record, state):
        total = 0
        for number in range(150000):
            total += number
"""


def test_a_steady_stream_of_progress_cannot_hold_a_step_beyond_its_wait_budget() -> None:
    """Each record's on_result is well inside the per-call limit; the whole replay is not inside the budget."""
    trace = [record(i, {"MATRIX_LR": (0.04, 0.05)} if i else {}, 2.6, "discard" if i else "baseline",
                    kind="proposal" if i else "baseline") for i in range(400)]
    # Without the budget the replay is allowed 2 s x 401 records + 5 s, and finishes.
    with MechanismRuntime.start([source(SLOW_REPLAY, "slow")], trace, state_for(trace),
                                step_wait_seconds=1.0) as runtime:
        assert runtime.active == []
        reason = runtime.deactivated[0]["reason"]
        assert runtime.deactivated[0]["kind"] == "timeout" and "1 s this host may hold a step" in reason, reason


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
