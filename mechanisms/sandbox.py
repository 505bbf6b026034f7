"""MechanismHost: the parent side of the sandboxed mechanism host process.

Isolation layers (``host.isolation`` lists those actually applied):

- ``empty-env``: the child gets ``env={}``: no API keys, no DJANGO_SETTINGS_MODULE, no tokens;
  ``-I -S`` also ignores PYTHON* variables, the user site and site-packages.
- ``rlimits``: address space, CPU seconds, open files, file size, no child processes, no core
  (applied by the child to itself before it reads any request, which keeps ``preexec_fn`` out of
  a possibly multi-threaded orchestrator).
- ``setuid-nobody``: when we are root, the child drops to an unprivileged uid/gid after
  importing the allowed modules; root would ignore RLIMIT_NPROC and could read everything.
- ``audit-hook``: an in-process ``sys.addaudithook`` guard refusing files, imports, processes,
  sockets, ctypes and, after loading, compile/exec (defence in depth, see host_child.py).
- ``new-session``: its own process group, killed as a whole (SIGKILL) on timeout or close.
- ``bwrap``: when bubblewrap is installed and works here, namespaces with no network and a
  read-only view of the file system.

The parent never trusts the child: every reply must be one JSON line with the request's id,
within the wall-clock limit and the byte cap; anything else kills the process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
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

HOST_CHILD_SOURCE = Path(__file__).with_name("host_child.py")
UNPRIVILEGED_ID = 65534  # nobody / nogroup
START_TIMEOUT_SECONDS = 10.0
PROTOCOL_OVERHEAD_BYTES = 64 * 1024
STDERR_TAIL_BYTES = 2000


class HostError(Exception):
    """The host process failed as a whole: it is dead (killed) after this is raised.

    kind: "start" | "timeout" | "crashed" | "protocol" | "closed".
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


def _bwrap_prefix(scratch: Path) -> list[str] | None:
    """A bubblewrap command prefix, if bwrap is installed and actually works in this environment."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    prefix = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev",
              "--proc", "/proc", "--tmpfs", "/tmp", "--bind", str(scratch), str(scratch), "--chdir", str(scratch)]
    probe = subprocess.run([*prefix, "/bin/true"], env={}, capture_output=True, timeout=10, check=False)
    return prefix if probe.returncode == 0 else None


class MechanismHost:
    """A sandboxed child process that runs mechanism code; used as a context manager.

    Every method raises HostError when the process is (now) dead; call() raises
    MechanismCallError when only the hook failed.
    """

    def __init__(self, time_limit_per_call: float = DEFAULT_CALL_TIMEOUT_SECONDS,
                 limits: SandboxLimits = DEFAULT_LIMITS, use_bwrap: bool | None = None) -> None:
        self.time_limit_per_call = time_limit_per_call
        self.limits = limits
        self.isolation: list[str] = []
        self.loaded: dict[str, list[str]] = {}
        self.alive = False
        self._next_id = 1
        self._buffer = b""
        self.scratch_dir = Path(tempfile.mkdtemp(prefix="mechanism-host-"))
        # Unlinked file for the child's fd 2 (start-up failures); RLIMIT_FSIZE caps it. Closed in close().
        self._stderr_log = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = self._spawn(use_bwrap)
        except HostError:
            self._stderr_log.close()
            raise
        self.pid = self._process.pid
        self.pgid = self._process.pid  # start_new_session: the child leads its own group
        self.alive = True
        try:
            hello = self._read_reply(0, START_TIMEOUT_SECONDS, context=(None, None))
            if not hello.get("ok"):
                raise HostError("start", f"host did not start: {hello}")
        except HostError:
            self.close()
            raise
        if hello["value"].get("dropped_privileges"):
            self.isolation.append("setuid-nobody")
        if hello["value"].get("audit_hook"):
            self.isolation.append("audit-hook")

    # -- process management ----------------------------------------------------------------------

    def _spawn(self, use_bwrap: bool | None) -> subprocess.Popen[bytes]:
        drop_to = UNPRIVILEGED_ID if os.geteuid() == 0 else -1
        if drop_to >= 0:
            os.chown(self.scratch_dir, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        os.chmod(self.scratch_dir, 0o700)
        limits_json = json.dumps(asdict(self.limits))
        command = [sys.executable, "-I", "-S", "-c", HOST_CHILD_SOURCE.read_text(),
                   ",".join(ALLOWED_IMPORTS), str(drop_to), str(drop_to), limits_json]
        prefix = _bwrap_prefix(self.scratch_dir) if use_bwrap is not False else None
        if use_bwrap and prefix is None:
            raise HostError("start", "bubblewrap was requested but is not installed or does not work here")
        if prefix is not None:
            command = prefix + command
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_log,
                env={}, cwd=self.scratch_dir, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            raise HostError("start", f"could not start the mechanism host: {exc}") from exc
        self.isolation += ["empty-env", "rlimits", "new-session"] + (["bwrap"] if prefix else [])
        return process

    def _kill(self) -> None:
        if self.alive:
            self.alive = False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """Kill the process group and delete the scratch directory. Idempotent."""
        if self._process.returncode is None or self.alive:
            self._kill()
        self._stderr_log.close()
        shutil.rmtree(self.scratch_dir, ignore_errors=True)

    def __enter__(self) -> MechanismHost:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stderr_tail(self) -> str:
        self._stderr_log.seek(0, os.SEEK_END)
        size = self._stderr_log.tell()
        self._stderr_log.seek(max(0, size - STDERR_TAIL_BYTES))
        return self._stderr_log.read().decode("utf-8", "replace")

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
                raise self._fail("crashed", f"the host exited (status {code}) ({self._describe(context)}); "
                                            f"stderr: {self.stderr_tail()[-500:]}", context)
            self._buffer += chunk
            if len(self._buffer) > cap and b"\n" not in self._buffer[:cap]:
                raise self._fail("protocol", f"reply larger than {cap} bytes ({self._describe(context)})", context)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    @staticmethod
    def _describe(context: tuple[str | None, str | None]) -> str:
        mechanism, hook = context
        return f"mechanism {mechanism}, hook {hook}" if mechanism else "host"

    def _read_reply(self, request_id: int, timeout: float, context: tuple[str | None, str | None],
                    on_progress: Callable[[list[Any]], tuple[str | None, str | None]] | None = None,
                    overall_timeout: float | None = None) -> dict[str, Any]:
        """Read lines until the reply to request_id; progress lines (load, replay) restart the clock."""
        overall_deadline = time.monotonic() + (overall_timeout or timeout)
        deadline = min(time.monotonic() + timeout, overall_deadline)
        while True:
            line = self._read_line(deadline, context)
            try:
                message = json.loads(line)
            except ValueError:
                raise self._fail("protocol", f"reply is not JSON ({self._describe(context)})", context) from None
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
        request_id = self._next_id
        self._next_id += 1
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps({**payload, "id": request_id}, allow_nan=False).encode() + b"\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._fail("crashed", f"the host is gone ({exc}); stderr: {self.stderr_tail()[-500:]}",
                             context) from exc
        reply = self._read_reply(request_id, timeout, context, on_progress, overall_timeout)
        if not reply["ok"] and reply.get("kind") == "protocol":
            raise self._fail("protocol", f"the host refused the request: {reply.get('error')}", context)
        return reply

    # -- operations ------------------------------------------------------------------------------

    def ping(self) -> None:
        self._request({"op": "ping"}, self.time_limit_per_call, (None, None))

    def load(self, mechanisms: Sequence[MechanismSource]) -> LoadReport:
        """Import each mechanism module and instantiate its class (once per host)."""
        context: tuple[str | None, str | None] = (None, "load")

        def progress(position: list[Any]) -> tuple[str | None, str | None]:
            return (str(position[0]) if position else None, "load")

        reply = self._request({"op": "load", "mechanisms": list(mechanisms)}, self.time_limit_per_call, context,
                              progress, self.time_limit_per_call * (len(mechanisms) + 1))
        value = reply.get("value")
        if not isinstance(value, dict) or not isinstance(value.get("loaded"), dict):
            raise self._fail("protocol", "malformed load reply", context)
        loaded = {str(k): [str(h) for h in v] for k, v in value["loaded"].items() if isinstance(v, list)}
        errors = {str(k): str(v) for k, v in value.get("errors", {}).items()}
        self.loaded = loaded
        return {"loaded": loaded, "errors": errors}

    def call(self, name: str, hook: str, *args: Any) -> Any:
        """Call one hook; returns its raw JSON value (type-check it with protocol.check_hook_return)."""
        reply = self._request({"op": "call", "mechanism": name, "hook": hook, "args": list(args)},
                              self.time_limit_per_call, (name, hook))
        if not reply["ok"]:
            raise MechanismCallError(str(reply.get("kind")), str(reply.get("error")), name, hook)
        return reply.get("value")

    def replay(self, trace: list[TraceRecord], state: State, mechanisms: Sequence[str] | None = None) -> ReplayReport:
        """Feed every record through each mechanism's on_result (state rewound to before it)."""
        payload: dict[str, Any] = {"op": "replay", "trace": trace, "state": state}
        if mechanisms is not None:
            payload["mechanisms"] = list(mechanisms)

        def progress(position: list[Any]) -> tuple[str | None, str | None]:
            return (str(position[0]) if position else None, "on_result")

        # The per-call limit applies to each on_result call; the overall cap bounds a host that
        # keeps announcing progress without end.
        replayed = len(mechanisms) if mechanisms is not None else len(self.loaded)
        overall = self.time_limit_per_call * (len(trace) + 1) * max(1, replayed) + 5
        reply = self._request(payload, self.time_limit_per_call, (None, "replay"), progress, overall)
        value = reply.get("value")
        if not isinstance(value, dict):
            raise self._fail("protocol", "malformed replay reply", (None, "replay"))
        errors: dict[str, ReplayError] = {
            str(k): {"index": int(v.get("index", -1)), "kind": str(v.get("kind")), "error": str(v.get("error"))}
            for k, v in value.get("errors", {}).items() if isinstance(v, dict)
        }
        return {"calls": int(value.get("calls", 0)), "errors": errors}
