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

A host runs only while the parent waits on its call. The parent checks the host's credentials
on the host's side of the namespace (never root, no capabilities), then stops it (SIGSTOP, which
no process can catch, and nothing inside can send SIGCONT: signals are refused by seccomp) after
every reply and continues it when the next request is written. Before continuing it, the parent
asks the kernel where the host was stopped (/proc/<pid>/syscall) and how much CPU it has used
(/proc/<pid>/schedstat): a host that was not waiting for its next request, or used CPU since its
reply (a mechanism can write a reply straight to the protocol descriptor and go on computing),
is killed with that finding. ``check_between_calls()`` does the same at the end of a step, and
notices a host that died after its last call.

Whatever the host says is the mechanism's, not the system's: an error carries the system's own
finding first and the host's text (stderr, exception text) apart, shown only quoted and labelled
(``text.mechanism_words``), so a mechanism cannot write the reason a reviewer reads.
"""

from __future__ import annotations

import contextlib
import functools
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
    host_credentials,
    interpreter,
    seccomp_pipe,
    seccomp_programs,
)
from mechanisms.text import mechanism_words

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
# CPU a well-behaved host spends between writing a reply and blocking on its next read (returning
# from write, one loop turn of the interpreter): well under a millisecond; anything near this is not.
OUTSIDE_CALL_CPU_GRACE_NS = 20_000_000
# When the stop caught the host between its reply and its next read, how long it may take to get there.
SETTLE_SECONDS = 0.25
# The host's kinds of hook failure; any other word the host sends is not trusted as a kind.
CALL_FAILURE_KINDS = ("exception", "forbidden", "bad_return", "missing_hook")


class _Finding(Exception):
    """The system's finding (``finding``), then the mechanism's own words quoted (``words``), never mixed."""

    def __init__(self, finding: str, words: str = "") -> None:
        super().__init__(finding)
        self.finding = finding
        self.words = words

    def __str__(self) -> str:
        quoted = mechanism_words(self.words)
        return f"{self.finding}; {quoted}" if quoted else self.finding


class HostError(_Finding):
    """The host process failed as a whole: it is dead (killed) after this is raised.

    kind: "isolation" | "start" | "timeout" | "crashed" | "protocol" | "closed" | "outside_call".
    ``mechanism`` names the mechanism whose code was running, when that is known; ``words`` is what
    the host wrote (its stderr), shown quoted after the finding.
    """

    def __init__(self, kind: str, message: str, mechanism: str | None = None, hook: str | None = None,
                 words: str = "") -> None:
        super().__init__(message, words)
        self.kind = kind
        self.mechanism = mechanism
        self.hook = hook


class MechanismCallError(_Finding):
    """One hook call failed but the host lives on. kind: one of CALL_FAILURE_KINDS.

    The message is the system's finding; ``words`` is the host's own report (exception text,
    refusals): the host runs the mechanism's code, so that report is the mechanism's.
    """

    def __init__(self, kind: str, message: str, mechanism: str, hook: str, words: str = "") -> None:
        super().__init__(message, words)
        self.kind = kind
        self.mechanism = mechanism
        self.hook = hook


class LoadReport(TypedDict):
    loaded: dict[str, list[str]]  # mechanism -> hooks it defines
    errors: dict[str, str]  # mechanism -> why it failed to load, in the host's words (quote them)


class ReplayError(TypedDict):
    index: int
    kind: str
    error: str  # the host's own text: show it through mechanism_words


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
                 limits: SandboxLimits = DEFAULT_LIMITS, *, python_guards: bool = True, wait: bool = True,
                 wait_budget: float | None = None) -> None:
        """``python_guards=False`` leaves out the in-process defence in depth (restricted builtins,
        audit hooks); only the isolation tests use it, to show that the kernel alone holds.
        ``wait_budget``: the most seconds the parent waits on this host in all (a host lives for
        one engine step), however many calls and progress lines; None for no cap beyond each call's."""
        self.time_limit_per_call = time_limit_per_call
        self.python_guards = python_guards
        self.limits = limits
        self.wait_budget = wait_budget
        self.waited = 0.0
        self.isolation: list[str] = []
        self.loaded: dict[str, list[str]] = {}
        self.alive = False
        self._next_id = 1
        self._buffer = b""
        self.host_pid: int | None = None  # the host interpreter's pid on the parent's side of the namespace
        self._proc_fds: tuple[int, int] | None = None  # /proc/<host_pid>/syscall and schedstat
        self._request_fd = -1
        self._paused_after: str | None = None  # what the host last answered, while it is stopped
        self._cpu_at_pause = 0
        self._waiting_at_pause = False
        self._wait_started = time.monotonic()
        # Unlinked file for the child's fd 2 (start-up failures); RLIMIT_FSIZE caps it. Closed in close().
        self._stderr_log = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = self._spawn()
        except HostError:
            self._stderr_log.close()
            raise
        self.pid = self._process.pid
        assert self._process.stdin is not None
        os.set_blocking(self._process.stdin.fileno(), False)  # see _send
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
        raw = hello.get("value")
        value: dict[str, Any] = raw if isinstance(raw, dict) else {}
        confinement = value.get("confinement")
        if not hello.get("ok") or confinement != EXPECTED_CONFINEMENT:
            self.close()
            raise HostError("isolation", f"the mechanism host could not prove its confinement "
                                         f"(reported {confinement!r}); generated code is not loaded")
        try:
            self._watch(int(value.get("request_fd", -1)))
        except (OSError, ValueError, IsolationUnavailable) as exc:
            self.close()
            raise HostError("isolation", f"the mechanism host's process could not be checked from outside ({exc}); "
                                         f"generated code is not loaded") from exc
        self.isolation = [*LAYERS, *(["python guards (defence in depth)"] if self.python_guards else [])]
        self.ready = True
        self._pause("its start")

    # -- the host seen from outside: credentials, CPU, stops -----------------------------------------

    def _watch(self, request_fd: int) -> None:
        """Find the host interpreter's pid (bubblewrap -> its pid 1 -> the host) and check its credentials."""
        init = _only_child(self._process.pid)
        host = _only_child(init)
        _check_credentials(host)
        self.host_pid = host
        self._request_fd = request_fd
        self._proc_fds = (os.open(f"/proc/{host}/syscall", os.O_RDONLY | os.O_CLOEXEC),
                          os.open(f"/proc/{host}/schedstat", os.O_RDONLY | os.O_CLOEXEC))

    def _cpu_ns(self) -> int:
        """CPU the host has used (ns, user + system); the kernel's count, not the host's."""
        assert self._proc_fds is not None
        return int(os.pread(self._proc_fds[1], 128, 0).split()[0])

    def _where(self) -> bytes | None:
        """Where the kernel shows the host: b"waiting" (blocked or stopped reading its next request),
        b"elsewhere" (stopped or blocked anywhere else), or None (running, or not yet stopped)."""
        assert self._proc_fds is not None
        fields = os.pread(self._proc_fds[0], 256, 0).split()
        if not fields or fields[0] == b"running":
            return None
        reading = fields[0] == _read_syscall_number() and len(fields) > 1 and int(fields[1], 16) == self._request_fd
        return b"waiting" if reading else b"elsewhere"

    def _pause(self, after: str) -> None:
        """Stop the host until the next request: it may not run while the parent is not waiting on it."""
        if not self.alive or self._proc_fds is None or self.host_pid is None:
            return
        try:
            # Seen at its read before the stop: until the stop takes effect the kernel says
            # "running", and that is the stop being handled, not the host working.
            self._waiting_at_pause = self._where() == b"waiting"
            self._cpu_at_pause = self._cpu_ns()
            os.kill(self.host_pid, signal.SIGSTOP)
        except (OSError, ValueError, IndexError):
            return  # gone: the next request or check_between_calls() says so
        self._paused_after = after

    def _resume(self) -> None:
        if self._paused_after is not None and self.host_pid is not None:
            self._paused_after = None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.host_pid, signal.SIGCONT)

    def check_between_calls(self, context: tuple[str | None, str | None] = (None, None)) -> None:
        """Raise HostError (and kill) when the host ran outside a call or died after its last one.

        Called before every request, and by the engine at the end of a step. The host must have
        been stopped blocked on reading its next request, having used no CPU since its reply;
        when the stop caught it on its way there, it gets SETTLE_SECONDS to arrive.
        """
        after = self._paused_after
        if after is None:
            if self.alive and self._process.poll() is not None:  # could not even be stopped: it was gone
                raise self._fail("crashed", f"the host died outside any call (status {self._process.returncode})",
                                 context, self.stderr_tail())
            return
        if not self.alive:
            return
        started = time.monotonic()
        try:
            where = self._where()
            if (where == b"waiting" or (where is None and self._waiting_at_pause)) \
                    and self._cpu_ns() - self._cpu_at_pause <= OUTSIDE_CALL_CPU_GRACE_NS:
                return
            # A stop just sent may not have taken effect yet (the kernel says "running"): wait for it.
            # Stopped elsewhere than at its read: the stop may have caught it on its way there, so it
            # is continued and gets SETTLE_SECONDS to arrive; what it used meanwhile is measured.
            while (where := self._where()) != b"waiting" and time.monotonic() - started < SETTLE_SECONDS:
                if self._process.poll() is not None:
                    break
                if where == b"elsewhere":
                    self._resume()
                time.sleep(0 if time.monotonic() - started < 0.001 else 0.0002)
            waiting = where == b"waiting"
            used = self._cpu_ns() - self._cpu_at_pause
        except (OSError, ValueError, IndexError):
            waiting, used = False, -1
        if self._process.poll() is not None or used < 0:
            self._process.wait()
            raise self._fail("crashed", f"the host died after {after}, outside any call "
                                        f"(status {self._process.returncode})", context, self.stderr_tail())
        if waiting and used <= OUTSIDE_CALL_CPU_GRACE_NS:
            if self._paused_after is None:
                self._pause(after)  # it was on its way to the read: a race, not a finding
            return
        what = "was not waiting for the next request" if not waiting else "had used the CPU before it waited"
        raise self._fail("outside_call", f"the host ran outside a call: after {after} it {what}, and used "
                                         f"{used / 1e6:.0f} ms of CPU while the parent was not waiting on it",
                         context)

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
            credentials = host_credentials()
            # A root parent starts bubblewrap as the unprivileged host user, with no supplementary
            # group: bubblewrap then maps the sandbox user to that uid, never to root.
            uid, gid = credentials if credentials else (None, None)
            return subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_log,
                env={}, cwd="/", start_new_session=True, close_fds=True, pass_fds=(seccomp_fd,),
                user=uid, group=gid, extra_groups=[] if credentials else None,
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
            # The host first, by its own pid while bubblewrap still holds it (so the pid cannot have
            # been reused); then bubblewrap, which leads its own group and whose death takes the pid
            # namespace with it.
            if self.host_pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.host_pid, signal.SIGKILL)
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
        if self._proc_fds is not None:
            for fd in self._proc_fds:
                os.close(fd)
            self._proc_fds = None
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

    def _fail(self, kind: str, message: str, context: tuple[str | None, str | None], words: str = "") -> HostError:
        self._kill()
        return HostError(kind, message, mechanism=context[0], hook=context[1], words=words)

    def _read_line(self, deadline: float, context: tuple[str | None, str | None]) -> bytes:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        cap = self.limits.max_response_bytes + PROTOCOL_OVERHEAD_BYTES
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                spent = self.wait_budget is not None and self.waited + (time.monotonic() - self._wait_started) \
                    >= self.wait_budget
                limit = (f"the {self.wait_budget:g} s this host may hold a step in all" if spent
                         else "the time limit")
                raise self._fail("timeout", f"no reply within {limit} ({self._describe(context)})", context)
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
                raise self._fail("crashed", f"the host exited (status {code}) ({self._describe(context)})",
                                 context, self.stderr_tail())
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
        """Read lines until the reply to request_id; progress lines (load, replay) restart the clock.

        Whatever the clocks say, the wait never goes beyond what is left of the host's wait budget.
        """
        started = time.monotonic()
        try:
            return self._read_reply_within(request_id, timeout, context, on_progress, overall_timeout)
        finally:
            self.waited += time.monotonic() - started

    def _read_reply_within(self, request_id: int, timeout: float, context: tuple[str | None, str | None],
                           on_progress: Callable[[list[Any]], tuple[str | None, str | None]] | None,
                           overall_timeout: float | None) -> dict[str, Any]:
        overall_deadline = time.monotonic() + (overall_timeout or timeout)
        if self.wait_budget is not None:
            overall_deadline = min(overall_deadline, time.monotonic() + max(0.0, self.wait_budget - self.waited))
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
        self.check_between_calls(context)
        request_id = self._next_id
        self._next_id += 1
        self._send(json.dumps({**payload, "id": request_id}, allow_nan=False).encode() + b"\n", timeout, context)
        reply = self._read_reply(request_id, timeout, context, on_progress, overall_timeout)
        self._pause(f"its reply to {self._describe(context)}")
        if not reply["ok"] and reply.get("kind") == "protocol":
            raise self._fail("protocol", "the host refused the request", context, str(reply.get("error")))
        return reply

    def _send(self, data: bytes, timeout: float, context: tuple[str | None, str | None]) -> None:
        """Write a request to the stopped host, then continue it.

        Written before the host is continued when it fits the pipe (the host then wakes once, to
        read it); the rest after, as the host reads, within the call's time limit: the write end is
        non-blocking, so a host that never reads cannot hang the parent on a large request.
        """
        assert self._process.stdin is not None
        fd = self._process.stdin.fileno()
        view = memoryview(data)
        self._wait_started = time.monotonic()
        deadline = self._wait_started + timeout
        try:
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(fd, view):]
            self._resume()
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._fail("timeout", f"the host did not read its request within the time limit "
                                                f"({self._describe(context)})", context)
                if select.select([], [fd], [], remaining)[1]:
                    with contextlib.suppress(BlockingIOError):
                        view = view[os.write(fd, view):]
        except OSError as exc:  # BrokenPipeError: the host is gone
            raise self._fail("crashed", f"the host is gone ({exc})", context, self.stderr_tail()) from exc

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
            kind = reply.get("kind") if reply.get("kind") in CALL_FAILURE_KINDS else "exception"
            finding = {"exception": "raised an exception", "forbidden": "tried an operation the sandbox refused",
                       "bad_return": "returned a value that is not JSON within the size limit",
                       "missing_hook": "does not define the hook"}[str(kind)]
            raise MechanismCallError(str(kind), f"{hook}() {finding}", name, hook, str(reply.get("error"))[:4000])
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


@functools.lru_cache(maxsize=1)
def _read_syscall_number() -> bytes:
    import pyseccomp

    return str(pyseccomp.resolve_syscall(pyseccomp.system_arch(), "read")).encode()



def _only_child(pid: int) -> int:
    """The single child of pid (bubblewrap and its pid 1 each have exactly one)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise IsolationUnavailable(f"process {pid} has {len(children)} children, expected one")
    return int(children[0])


def _check_credentials(pid: int) -> None:
    """The host, seen from the parent's side of its user namespace: never root, no capabilities."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    ids = [int(value) for key in ("Uid", "Gid") for value in fields[key].split()]
    groups = [int(value) for value in fields.get("Groups", "").split()]
    capabilities = {key: int(fields[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapAmb") if key in fields}
    if 0 in ids or 0 in groups:
        raise IsolationUnavailable(f"the host runs with root's ids on this machine (uids/gids {ids}, groups {groups})")
    if any(capabilities.values()):
        raise IsolationUnavailable(f"the host holds capabilities {capabilities}")
    if int(fields.get("NoNewPrivs", "0")) != 1:
        raise IsolationUnavailable("the host may gain privileges (no_new_privs is not set)")


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
