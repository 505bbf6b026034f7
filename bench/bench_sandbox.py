"""sandbox: mechanism host start-up and hook-call latency, before and after kernel isolation.

"before" is the host of commit 012668f (the last one before the kernel isolation: a plain child
process with Python-level guards, no bubblewrap), loaded from git into a temporary package;
"after" is the current confined host (bubblewrap namespaces + seccomp). Both run here, in one
process, interleaved round by round, so machine load hits both alike.

A third side, "baseline", is the confined host of another commit (option baseline=<commit>, e.g.
the main branch before a change to the sandbox): the same measurement, so a change's cost is a
ratio from one run on one machine.

Options: starts=20 (host starts per side), calls=500 (hook calls per side), trace=30 (records in
the state each call carries), baseline=<commit> (off by default).
"""

from __future__ import annotations

import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_common import BenchEnv, Report, percentile

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "012668f"
MECHANISM = {"name": "m", "class_name": "Mechanism", "code": (
    "import random\n"
    "class Mechanism:\n"
    "    def propose(self, state):\n"
    "        return {'changes': {'MATRIX_LR': 0.05}, 'hypothesis': str(len(state['trace']))}\n")}
START_TARGET_MS = 150.0
CALL_TARGET_MS = 2.0


def _sandbox_at(commit: str, package_name: str, files: tuple[str, ...]) -> tuple[ModuleType | None, str]:
    """A commit's sandbox module, imported under another package name; (None, why) when git cannot give it."""
    directory = Path(tempfile.mkdtemp(prefix=f"bench-sandbox-{package_name}-"))
    package = directory / package_name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in files:
        shown = subprocess.run(["git", "show", f"{commit}:mechanisms/{name}"], cwd=ROOT,
                               capture_output=True, text=True, check=False)
        if shown.returncode != 0:
            return None, f"git show {commit} failed: {shown.stderr.strip()[:200]}"
        (package / name).write_text(shown.stdout.replace("from mechanisms.", f"from {package_name}."))
    sys.path.insert(0, str(directory))
    return importlib.import_module(f"{package_name}.sandbox"), ""


def _before_package() -> tuple[ModuleType | None, str]:
    return _sandbox_at(BEFORE_COMMIT, "mechanisms_before", ("sandbox.py", "host_child.py", "protocol.py"))


def _state(records: int) -> dict[str, Any]:
    trace = [{"iteration": i, "kind": "proposal", "changes": {"MATRIX_LR": {"old": 0.04, "new": 0.05}},
              "val_bpb": 2.6 + i / 1000, "status": "discard", "failure_class": "ok", "hypothesis": "h" * 80,
              "proposal_source": "agent", "training_seconds": 50.0} for i in range(records)]
    return {"iteration": records, "trace": trace, "search_space": [], "frozen": [], "guidance": "",
            "config": {}, "best": {"val_bpb": 2.6, "iteration": 0}, "baseline": {"val_bpb": 2.6, "noise_sd": None}}


def _start(factory: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    host = factory()
    host.ping()
    return (time.perf_counter() - started) * 1000, host


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    from mechanisms.sandbox.host import MechanismHost

    starts = int(options.get("starts", 20))
    calls = int(options.get("calls", 500))
    state = _state(int(options.get("trace", 30)))
    before_module, why_not = _before_package()
    factories: dict[str, Any] = {"after (bwrap + seccomp)": lambda: MechanismHost(time_limit_per_call=5.0)}
    baseline_commit = options.get("baseline", "")
    baseline_side = f"baseline ({baseline_commit})"
    if baseline_commit:
        baseline_module, why_no_baseline = _sandbox_at(
            baseline_commit, "mechanisms_baseline",
            ("sandbox.py", "host_child.py", "protocol.py", "isolation.py", "text.py"))
        if baseline_module is None:
            raise SystemExit(f"baseline={baseline_commit}: {why_no_baseline}")
        factories[baseline_side] = lambda: baseline_module.MechanismHost(time_limit_per_call=5.0)
    if before_module is not None:
        factories["before (plain child, Python guards)"] = lambda: before_module.MechanismHost(
            time_limit_per_call=5.0, use_bwrap=False)
    for factory in factories.values():  # warm caches (ldd, seccomp compilation, page cache) once per side
        _start(factory)[1].close()
    start_ms: dict[str, list[float]] = {side: [] for side in factories}
    for _ in range(starts):
        for side, factory in factories.items():
            elapsed, host = _start(factory)
            start_ms[side].append(elapsed)
            host.close()
    call_ms: dict[str, list[float]] = {side: [] for side in factories}
    hosts = {side: _start(factory)[1] for side, factory in factories.items()}
    try:
        for host in hosts.values():
            host.load([MECHANISM])
        for _ in range(calls):
            for side, host in hosts.items():
                started = time.perf_counter()
                host.call("m", "propose", state)
                call_ms[side].append((time.perf_counter() - started) * 1000)
    finally:
        for host in hosts.values():
            host.close()
    rows = [[side, round(statistics.median(start_ms[side]), 1), round(percentile(start_ms[side], 90), 1),
             round(statistics.median(call_ms[side]), 3), round(percentile(call_ms[side], 90), 3)]
            for side in factories]
    after = "after (bwrap + seccomp)"
    start_after, call_after = statistics.median(start_ms[after]), statistics.median(call_ms[after])
    notes = [f"{starts} starts and {calls} calls per side, interleaved; each call carries a state with "
             f"{len(state['trace'])} trace records ({len(str(state)) // 1024} KB)."]
    from mechanisms.sandbox.isolation import runtime

    notes.append(f"the host runs {runtime().interpreter} (an interpreter the sandbox's unprivileged user can read; "
                 f"a side loaded from an older commit runs the parent's own, here {sys.executable})")
    if baseline_side in factories:
        notes.append(f"ratio after/baseline ({baseline_commit}): start "
                     f"{start_after / statistics.median(start_ms[baseline_side]):.2f}x, call "
                     f"{call_after / statistics.median(call_ms[baseline_side]):.2f}x")
    before = "before (plain child, Python guards)"
    if before in factories:
        notes.append(f"ratio after/before: start {start_after / statistics.median(start_ms[before]):.2f}x, "
                     f"call {call_after / statistics.median(call_ms[before]):.2f}x")
    else:
        notes.append(f"no 'before' measurement: {why_not}")
    return Report(
        name="sandbox",
        title="sandbox: mechanism host start-up and hook-call latency",
        command=f"python3 bootstrap.py bench sandbox starts={starts} calls={calls}"
                + (f" baseline={baseline_commit}" if baseline_commit else ""),
        setup="One host per mechanism. Start = spawn until the first ping answers (confinement proven).",
        headers=["host", "start median ms", "start p90 ms", "call median ms", "call p90 ms"],
        rows=rows,
        targets=[(f"host start <= {START_TARGET_MS:g} ms (median)", start_after <= START_TARGET_MS),
                 (f"hook call <= {CALL_TARGET_MS:g} ms (median)", call_after <= CALL_TARGET_MS)],
        notes=notes,
    )
