"""Runs every attack in a kernel-only host (no Python guards) as whatever user starts it.

``test_isolation.py`` starts it as an unprivileged user with the system interpreter, from a copy
of the few modules it needs (the checkout itself may not be readable by that user):

    python3.11 -I -S unprivileged_driver.py <module dir>   < {"targets": {...}}   > [outcome, ...]

The round-two checks (``round_two``) are plain functions the root test calls in its own process
too, so both kinds of parent meet the same code. Each reports what the kernel shows from outside
(/proc of the host's pid), never what the mechanism says it did.

Standard library + ``mechanisms`` + ``pyseccomp`` only.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

# A window as long as a short training pause: a host that ran in it would show its CPU here.
BETWEEN_CALLS_WINDOW_SECONDS = 0.6


def cpu_ns(pid: int) -> int:
    """The kernel's count of the CPU a process has used (user + system, ns)."""
    with open(f"/proc/{pid}/schedstat") as counters:
        return int(counters.read().split()[0])


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat_file:
        return stat_file.read().rsplit(")", 1)[1].split()[0]


def host_identity(pid: int) -> dict[str, Any]:
    """Uids, gids, groups and capabilities of the host, on the parent's side of its namespace."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
    return {"uids": [int(v) for v in fields["Uid"].split()], "gids": [int(v) for v in fields["Gid"].split()],
            "groups": [int(v) for v in fields["Groups"].split()], "cap_eff": int(fields["CapEff"], 16)}


def writable_mounts(pid: int) -> list[str]:
    """Mount points the host can write under (its mountinfo's per-mount options lack "ro")."""
    writable = []
    with open(f"/proc/{pid}/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if "ro" not in fields[5].split(","):
                writable.append(fields[4])
    return writable


def between_calls(code: str) -> dict[str, Any]:
    """Call propose() once, watch the host for a training pause, then ask it again."""
    from mechanisms.sandbox.host import HostError, MechanismHost

    outcome: dict[str, Any] = {}
    with MechanismHost(time_limit_per_call=5.0, python_guards=False) as host:
        host.load([{"name": "m", "class_name": "Mechanism", "code": code}])
        outcome["reply"] = host.call("m", "propose", {})
        pid = host.host_pid
        assert pid is not None
        before = cpu_ns(pid)
        deadline = time.monotonic() + BETWEEN_CALLS_WINDOW_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
        outcome["cpu_ms_between_calls"] = (cpu_ns(pid) - before) / 1e6
        outcome["state_between_calls"] = process_state(pid)
        try:
            host.ping()
            outcome["next_call"] = "answered"
        except HostError as error:
            outcome["next_call"] = error.kind
            outcome["finding"] = str(error)
        outcome["host_gone"] = gone(pid)
    return outcome


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether the process is dead (absent or a zombie) within a few seconds: a pid namespace ends
    asynchronously after its init is killed."""
    deadline = time.monotonic() + within
    while True:
        try:
            if process_state(pid) == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def tamper(code: str) -> dict[str, Any]:
    """Run the every-path tamper attempt; report the host's identity and writable mounts from outside."""
    from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost

    with MechanismHost(time_limit_per_call=60.0, python_guards=False) as host:
        assert host.host_pid is not None
        outcome: dict[str, Any] = {"identity": host_identity(host.host_pid),
                                   "writable_mounts": writable_mounts(host.host_pid)}
        host.load([{"name": "m", "class_name": "Mechanism", "code": code}])
        try:
            outcome["said"] = host.call("m", "propose", {})["hypothesis"]
        except (HostError, MechanismCallError) as error:
            outcome["said"] = f"{error.kind}: {error}"
    return outcome


def round_two() -> dict[str, Any]:
    from attacks import KEEPS_RUNNING_AFTER_ITS_REPLY, TAMPER_EVERY_PATH

    return {"tamper": tamper(TAMPER_EVERY_PATH), "between_calls": between_calls(KEEPS_RUNNING_AFTER_ITS_REPLY)}


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from attacks import ATTACKS, supported

    from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost

    request = json.load(sys.stdin)
    if request.get("round_two"):
        json.dump(round_two(), sys.stdout)
        return
    targets: dict[str, Any] = request["targets"]
    outcomes: list[dict[str, Any]] = []
    with MechanismHost() as victim:
        victim.load([{"name": "victim", "class_name": "Mechanism",
                      "code": "class Mechanism:\n    def propose(self, state):\n        return None\n"}])
        targets = {**targets, "victims": [*targets["victims"], victim.pid]}
        for attack in ATTACKS:
            if not supported(attack):
                continue
            outcome: dict[str, Any] = {"name": attack.name}
            try:
                with MechanismHost(time_limit_per_call=5.0, python_guards=False) as host:
                    host.load([{"name": "m", "class_name": "Mechanism", "code": attack.code(targets)}])
                    outcome.update(kind="returned", detail=json.dumps(host.call("m", "propose", {})))
            except MechanismCallError as error:
                outcome.update(kind=error.kind, detail=str(error))
            except HostError as error:
                outcome.update(kind=error.kind, detail=str(error))
            outcomes.append(outcome)
        victim.ping()  # raises if an attack killed it
        outcomes.append({"name": "victim host", "kind": "alive", "detail": str(victim.pid)})
    json.dump(outcomes, sys.stdout)


if __name__ == "__main__":
    main()
