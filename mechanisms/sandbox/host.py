"""MechanismHost: the parent side of one sandboxed mechanism host process.

One mechanism per host process, so no mechanism can touch another's objects, and whatever a
host says is only ever credited to the one mechanism it runs. The process is confined by the
kernel (see ``isolation.py``: namespaces, a minimal read-only root, seccomp, rlimits, an empty
environment, a new session); the host reports its confinement in its first message (seccomp
filter mode, no environment, fresh namespaces, no /proc), and any other host is refused: Level 2
fails closed. The in-process guards of ``host_child.py`` (restricted builtins, audit hooks) are
defence in depth only.

The parent never trusts the child: every reply must be one JSON line with the request's id, of
a bounded size and nesting depth, within the wall-clock limit; anything else kills the process
(SIGKILL to bubblewrap, whose pid namespace dies with it) and raises HostError, which callers
turn into "deactivate this one mechanism", never into an engine failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict

from mechanisms.protocol import (
    ALLOWED_IMPORTS,
    DEFAULT_CALL_TIMEOUT_SECONDS,
    DEFAULT_LIMITS,
    MechanismSource,
    SandboxLimits,
    State,
    TraceRecord,
)
from mechanisms.sandbox.isolation import (
    LAYERS,
    SANDBOX_ID,
    IsolationStatus,
    IsolationUnavailable,
    bwrap_command,
    interpreter,
    seccomp_pipe,
    seccomp_programs,
)

HOST_CHILD_SOURCE = Path(__file__).with_name("host_child.py")
START_TIMEOUT_SECONDS = 10.0
PROTOCOL_OVERHEAD_BYTES = 64 * 1024
STDERR_TAIL_BYTES = 2000
# Hook values are small documents (a proposal is three levels deep); a deep reply is an attack
# on the parent's recursive JSON handling, not data.
MAX_REPLY_DEPTH = 32
STATUS_TTL_SECONDS = 300.0
# What the host must report about itself before it is trusted with mechanism code.
EXPECTED_CONFINEMENT = {"seccomp": "filter", "environment": [], "pid_namespace": True, "proc_visible": False,
                        "uid": SANDBOX_ID, "hostname": "mechanism-host"}
# bubblewrap exits with 128 + the signal that killed the host; seccomp kills with SIGSYS.
KILLED_BY_SECCOMP = 128 + signal.SIGSYS


class HostError(Exception):
    """The host process failed as a whole: it is dead (killed) after this is raised.

    kind: "isolation" | "start" | "timeout" | "crashed" | "protocol" | "closed".
    ``mechanism`` names the mechanism whose code was running, when that is known.
    """

    def __init__(self, kind: str, message: str, mechanism: str | None = None, hook: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.mechanism = mechanism
        self.hook = hook


class MechanismCallError(Exception):
    """One hook call failed but the host lives on. kind: "exception" | "bad_return" | "missing_hook"."""

    def __init__(self, kind: str, message: str, mechanism: str, hook: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.mechanism = mechanism
        self.hook = hook


class LoadReport(TypedDict):
    loaded: dict[str, list[str]]  # mechanism -> hooks it defines
    errors: dict[str, str]  # mechanism -> why it failed to load


class ReplayError(TypedDict):
    index: int
    kind: str
    error: str


class ReplayReport(TypedDict):
    calls: int
    errors: dict[str, ReplayError]


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_REPLY_DEPTH:
            return depth
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


class MechanismHost:
    """One confined child process that runs one mechanism's code; used as a context manager.

    Every method raises HostError when the process is (now) dead; call() raises
    MechanismCallError when only the hook failed. Construction raises HostError(kind="isolation")
    when kernel isolation is unavailable: there is no unconfined fallback.
    """

    def __init__(self, time_limit_per_call: float = DEFAULT_CALL_TIMEOUT_SECONDS,
                 limits: SandboxLimits = DEFAULT_LIMITS, *, python_guards: bool = True, wait: bool = True) -> None:
        """``python_guards=False`` leaves out the in-process defence in depth (restricted builtins,
        audit hooks); only the isolation tests use it, to show that the kernel alone holds."""
        self.time_limit_per_call = time_limit_per_call
        self.python_guards = python_guards
        self.limits = limits
        self.isolation: list[str] = []
        self.loaded: dict[str, list[str]] = {}
        self.alive = False
        self._next_id = 1
        self._buffer = b""
        # Unlinked file for the child's fd 2 (start-up failures); RLIMIT_FSIZE caps it. Closed in close().
        self._stderr_log = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = self._spawn()
        except HostError:
            self._stderr_log.close()
            raise
        self.pid = self._process.pid
        self.alive = True
        self.ready = False
        if wait:
            self.wait_until_ready()

    def wait_until_ready(self) -> None:
        """Read and check the host's first message; several hosts started with wait=False start in parallel.

        Only the thread that constructed the host may have spawned it: bubblewrap dies with the
        thread that started it (--die-with-parent), so hosts are never spawned in short-lived threads.
        """
        if self.ready:
            return
        try:
            hello = self._read_reply(0, START_TIMEOUT_SECONDS, context=(None, None))
        except HostError as error:
            stderr = self.stderr_text()
            self.close()
            if error.kind == "crashed":
                raise HostError("isolation", _explain_start_failure(stderr)) from error
            raise
        confinement = hello.get("value", {}).get("confinement") if isinstance(hello.get("value"), dict) else None
        if not hello.get("ok") or confinement != EXPECTED_CONFINEMENT:
            self.close()
            raise HostError("isolation", f"the mechanism host could not prove its confinement "
                                         f"(reported {confinement!r}); generated code is not loaded")
        self.isolation = [*LAYERS, *(["python guards (defence in depth)"] if self.python_guards else [])]
        self.ready = True

    # -- process management ----------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        try:
            start_program, locked_program = seccomp_programs()
            seccomp_fd = seccomp_pipe(start_program)
        except IsolationUnavailable as exc:
            raise HostError("isolation", str(exc)) from exc
        try:
            command = [*bwrap_command(seccomp_fd), interpreter(), "-I", "-S", "-c", HOST_CHILD_SOURCE.read_text(),
                       ",".join(ALLOWED_IMPORTS), json.dumps(asdict(self.limits)), locked_program.hex(),
                       "guards" if self.python_guards else "no-guards"]
            return subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_log,
                env={}, cwd="/", start_new_session=True, close_fds=True, pass_fds=(seccomp_fd,),
            )
        except IsolationUnavailable as exc:
            raise HostError("isolation", str(exc)) from exc
        except OSError as exc:
            raise HostError("isolation", f"could not start bubblewrap: {exc}") from exc
        finally:
            os.close(seccomp_fd)

    def _kill(self) -> None:
        if self.alive:
            self.alive = False
            # bubblewrap leads its own group; its death takes the pid namespace (and the host) with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # flushing into a dead pipe
                    stream.close()

    def close(self) -> None:
        """Kill the process (and its namespace). Idempotent."""
        if self._process.returncode is None or self.alive:
            self._kill()
        self._stderr_log.close()

    def __enter__(self) -> MechanismHost:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stderr_text(self) -> str:
        if self._stderr_log.closed:
            return ""
        self._stderr_log.seek(0, os.SEEK_END)
        size = self._stderr_log.tell()
        self._stderr_log.seek(max(0, size - STDERR_TAIL_BYTES))
        return self._stderr_log.read().decode("utf-8", "replace")

    def stderr_tail(self) -> str:
        return self.stderr_text()[-500:]

    # -- the wire ------------------------------------------------------------------------------

    def _fail(self, kind: str, message: str, context: tuple[str | None, str | None]) -> HostError:
        self._kill()
        return HostError(kind, message, mechanism=context[0], hook=context[1])

    def _read_line(self, deadline: float, context: tuple[str | None, str | None]) -> bytes:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        cap = self.limits.max_response_bytes + PROTOCOL_OVERHEAD_BYTES
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("timeout", f"no reply within the time limit ({self._describe(context)})", context)
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self._process.wait()
                code = self._process.returncode
                if code == KILLED_BY_SECCOMP:
                    raise self._fail("crashed", "the kernel killed the host: the mechanism made a forbidden "
                                                "system call (process, signal, socket, exec, ptrace, mount, "
                                                f"namespace, ...) ({self._describe(context)})", context)
                raise self._fail("crashed", f"the host exited (status {code}) ({self._describe(context)}); "
                                            f"stderr: {self.stderr_tail()}", context)
            self._buffer += chunk
            if len(self._buffer) > cap and b"\n" not in self._buffer[:cap]:
                raise self._fail("protocol", f"reply larger than {cap} bytes ({self._describe(context)})", context)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    @staticmethod
    def _describe(context: tuple[str | None, str | None]) -> str:
        mechanism, hook = context
        return f"mechanism {mechanism}, hook {hook}" if mechanism else "host"

    def _decode(self, line: bytes, context: tuple[str | None, str | None]) -> Any:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise self._fail("protocol", f"reply is not JSON ({self._describe(context)})", context) from None
        if json_depth(message) > MAX_REPLY_DEPTH:
            raise self._fail("protocol", f"reply nested deeper than {MAX_REPLY_DEPTH} levels "
                                         f"({self._describe(context)})", context)
        return message

    def _read_reply(self, request_id: int, timeout: float, context: tuple[str | None, str | None],
                    on_progress: Callable[[list[Any]], tuple[str | None, str | None]] | None = None,
                    overall_timeout: float | None = None) -> dict[str, Any]:
        """Read lines until the reply to request_id; progress lines (load, replay) restart the clock."""
        overall_deadline = time.monotonic() + (overall_timeout or timeout)
        deadline = min(time.monotonic() + timeout, overall_deadline)
        while True:
            message = self._decode(self._read_line(deadline, context), context)
            if not isinstance(message, dict) or message.get("id") != request_id:
                raise self._fail("protocol", f"unexpected reply ({self._describe(context)})", context)
            if "progress" in message and on_progress is not None:
                context = on_progress(message["progress"])
                deadline = min(time.monotonic() + timeout, overall_deadline)
                continue
            if self._buffer:
                raise self._fail("protocol", f"extra output after a reply ({self._describe(context)})", context)
            if not isinstance(message.get("ok"), bool):
                raise self._fail("protocol", f"malformed reply ({self._describe(context)})", context)
            return message

    def _request(self, payload: dict[str, Any], timeout: float, context: tuple[str | None, str | None],
                 on_progress: Callable[[list[Any]], tuple[str | None, str | None]] | None = None,
                 overall_timeout: float | None = None) -> dict[str, Any]:
        if not self.alive:
            raise HostError("closed", "the mechanism host is not running", *context)
        self.wait_until_ready()
        request_id = self._next_id
        self._next_id += 1
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps({**payload, "id": request_id}, allow_nan=False).encode() + b"\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._fail("crashed", f"the host is gone ({exc}); stderr: {self.stderr_tail()}",
                             context) from exc
        reply = self._read_reply(request_id, timeout, context, on_progress, overall_timeout)
        if not reply["ok"] and reply.get("kind") == "protocol":
            raise self._fail("protocol", f"the host refused the request: {reply.get('error')}", context)
        return reply

    # -- operations ------------------------------------------------------------------------------

    def ping(self) -> None:
        self._request({"op": "ping"}, self.time_limit_per_call, (None, None))

    def load(self, mechanisms: Sequence[MechanismSource]) -> LoadReport:
        """Import the one mechanism module this host runs and instantiate its class."""
        if len(mechanisms) != 1:
            raise ValueError("a mechanism host runs exactly one mechanism")
        name = mechanisms[0]["name"]
        context: tuple[str | None, str | None] = (name, "load")
        reply = self._request({"op": "load", "mechanisms": list(mechanisms)}, self.time_limit_per_call, context,
                              lambda _position: context, self.time_limit_per_call * 2)
        value = reply.get("value")
        if not isinstance(value, dict) or not isinstance(value.get("loaded"), dict):
            raise self._fail("protocol", "malformed load reply", context)
        # Only the requested name counts: a host speaks for its own mechanism and nothing else.
        hooks = value["loaded"].get(name)
        errors: dict[str, Any] = value["errors"] if isinstance(value.get("errors"), dict) else {}
        loaded = {name: [str(h) for h in hooks]} if isinstance(hooks, list) else {}
        failed = {name: str(errors[name])[:4000]} if name in errors and not loaded else {}
        if not loaded and not failed:
            raise self._fail("protocol", "the load reply does not mention the mechanism", context)
        self.loaded = loaded
        return {"loaded": loaded, "errors": failed}

    def call(self, name: str, hook: str, *args: Any) -> Any:
        """Call one hook; returns its raw JSON value (type-check it with protocol.check_hook_return)."""
        if name not in self.loaded:
            raise MechanismCallError("missing_hook", f"this host does not run {name!r}", name, hook)
        reply = self._request({"op": "call", "mechanism": name, "hook": hook, "args": list(args)},
                              self.time_limit_per_call, (name, hook))
        if not reply["ok"]:
            raise MechanismCallError(str(reply.get("kind"))[:40], str(reply.get("error"))[:4000], name, hook)
        return reply.get("value")

    def replay(self, trace: list[TraceRecord], state: State, mechanisms: Sequence[str] | None = None) -> ReplayReport:
        """Feed every record through the mechanism's on_result (state rewound to before it)."""
        name = next(iter(self.loaded), None)
        context: tuple[str | None, str | None] = (name, "on_result")
        payload: dict[str, Any] = {"op": "replay", "trace": trace, "state": state}
        # The per-call limit applies to each on_result call; the overall cap bounds a host that
        # keeps announcing progress without end.
        overall = self.time_limit_per_call * (len(trace) + 1) + 5
        reply = self._request(payload, self.time_limit_per_call, context, lambda _position: context, overall)
        value = reply.get("value")
        if not isinstance(value, dict):
            raise self._fail("protocol", "malformed replay reply", context)
        raw_errors: dict[str, Any] = value["errors"] if isinstance(value.get("errors"), dict) else {}
        errors: dict[str, ReplayError] = {}
        failure = raw_errors.get(name) if name is not None else None
        if isinstance(failure, dict) and name is not None:
            index = failure.get("index")
            errors[name] = {"index": index if isinstance(index, int) else -1, "kind": str(failure.get("kind"))[:40],
                            "error": str(failure.get("error"))[:4000]}
        calls = value.get("calls")
        return {"calls": calls if isinstance(calls, int) else 0, "errors": errors}


def _explain_start_failure(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    hint = ""
    if "bwrap" in last and ("uid map" in last or "namespace" in last or "Operation not permitted" in last):
        hint = (" User namespaces seem to be disabled on this machine: enable them "
                "(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1) "
                "or run the workers as root.")
    return f"kernel isolation could not be set up, so generated code is not loaded ({last}).{hint}"


_status_lock = threading.Lock()
_status: IsolationStatus | None = None


def isolation_status(refresh: bool = False) -> IsolationStatus:
    """Whether a confined host starts and proves its confinement here (cached for a few minutes)."""
    global _status
    with _status_lock:
        if not refresh and _status is not None and time.monotonic() - _status.checked_at < STATUS_TTL_SECONDS:
            return _status
        try:
            with MechanismHost(time_limit_per_call=10.0) as host:
                host.ping()
            _status = IsolationStatus(True, "", time.monotonic())
        except HostError as exc:
            _status = IsolationStatus(False, str(exc), time.monotonic())
        return _status
