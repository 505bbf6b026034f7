"""The mechanism host: the confined child process that runs one generated mechanism.

Standalone on purpose: it imports only the standard library and never the project, because it
runs untrusted code and must not have project code (settings, clients, keys) in its memory.
`sandbox.MechanismHost` starts it inside bubblewrap (see ``isolation.py``) as

    python -I -S -c <this source> <allowed,modules> <limits json> <locked seccomp program, hex> guards

and talks JSON lines over stdin/stdout. Start-up, in order (nothing untrusted runs before 5):

1. apply resource limits to itself (address space, CPU, files, file size, no child processes);
2. move the protocol to a private duplicate of stdout; fd 1 becomes /dev/null, and sys.stdout
   and sys.stderr become capped in-memory sinks, so a mechanism's print cannot corrupt it;
3. install the "locked" seccomp filter on itself (no execve from now on; the kernel's filter
   from bubblewrap already refuses processes, signals, sockets, ptrace, mknod, mounts, ...);
4. report its confinement in the first message (seccomp filter mode, an empty environment,
   a fresh pid and uts namespace, no /proc, the sandbox uid): the parent refuses any other host;
5. on `load`: compile the code, import the allowed modules it names (reading their files),
   then install audit hooks refusing files, imports, processes, sockets, ctypes, and only then
   run the module; after it, compile/exec are refused too. The audit hooks are defence in depth
   only: the kernel is the barrier.

Requests: {"id", "op": "ping"|"load"|"call"|"replay", ...}. Responses: {"id", "ok": true,
"value"} or {"id", "ok": false, "error", "kind"}; during load and replay, {"id", "progress":
[name, i]} lines restart the parent's per-call clock.
Once mechanism code has run, this process is assumed hostile: the parent validates every line.
"""

from __future__ import annotations

import builtins
import copy
import ctypes
import importlib
import json
import linecache
import os
import resource
import sys
import traceback
from typing import Any

Json = Any  # a decoded JSON value
Reply = dict[str, Any]

HOOK_NAMES = ("on_result", "prompt_sections", "restrict", "propose", "filter", "accept")
ERROR_TEXT_LIMIT = 4000
PRINT_CAPTURE_LIMIT = 64 * 1024

# Names removed from a mechanism's builtins; `__import__` is replaced by an allow-list guard.
REMOVED_BUILTINS = (
    "open", "eval", "exec", "compile", "input", "breakpoint", "globals", "locals", "vars",
    "setattr", "delattr", "help", "exit", "quit", "copyright", "credits", "license", "memoryview",
)


# What the audit hooks refused during the current request; bound into them as a default value,
# so rebinding this name cannot detach them. A refusal is reported even when the mechanism
# swallows the PermissionError: trying a forbidden operation is itself the finding.
REFUSED: list[str] = []


def deny_side_effects(event: str, args: tuple[Any, ...], refused: list[str] = REFUSED) -> None:
    """Audit hook armed before any mechanism code runs. Constants only: see the module doc."""
    if event == "open" or event == "import" or event.startswith((
        "os.", "subprocess.", "socket.", "ctypes.", "shutil.", "tempfile.", "glob.", "pty.", "fcntl.",
        "resource.", "signal.", "mmap.", "gc.", "marshal.", "pickle.", "shelve.", "dbm.", "sqlite3.",
        "urllib.", "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.",
        "webbrowser.", "syslog.", "cpython.", "winreg.", "msvcrt.", "_winapi.", "ensurepip.",
    )) or event in {"code.__new__", "function.__new__", "builtins.input", "sys._current_frames",
                    "_thread.start_new_thread", "sys.settrace", "sys.setprofile"}:
        refused.append(event)
        raise PermissionError("mechanism sandbox: " + event + " is not allowed")
    # Setting __code__/__defaults__ of a function (or dunders of a class) could rewrite this hook.
    if (event == "object.__setattr__" or event == "object.__delattr__") and args[1][:2] == "__":
        refused.append("setting " + args[1])
        raise PermissionError("mechanism sandbox: setting " + args[1] + " is not allowed")


def deny_code_loading(event: str, args: tuple[Any, ...], refused: list[str] = REFUSED) -> None:
    """Second audit hook, armed after the mechanisms are loaded: no new code may be compiled."""
    if event == "compile" or event == "exec":
        refused.append(event)
        raise PermissionError("mechanism sandbox: dynamic code (" + event + ") is not allowed")


def refusals() -> str | None:
    """What was refused since the last call (then forgotten), or None."""
    if not REFUSED:
        return None
    text = "the sandbox refused: " + ", ".join(sorted(set(REFUSED)))
    REFUSED.clear()
    return text[:1000]


class CappedSink:
    """Stands in for sys.stdout/sys.stderr: keeps a little of what is printed, drops the rest."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.size = 0

    def write(self, text: object) -> int:
        text = str(text)
        if self.size < PRINT_CAPTURE_LIMIT:
            self.kept.append(text[: PRINT_CAPTURE_LIMIT - self.size])
        self.size += len(text)
        return len(text)

    def flush(self) -> None:
        return None


class Host:
    def __init__(self, protocol_out_fd: int, allowed: list[str], max_response_bytes: int,
                 python_guards: bool) -> None:
        self.protocol_out_fd = protocol_out_fd
        self.allowed = frozenset(allowed)
        self.max_response_bytes = max_response_bytes
        self.instances: dict[str, object] = {}
        self.order: list[str] = []
        self.loaded = False
        self.real_import = builtins.__import__
        self.python_guards = python_guards
        self.mechanism_builtins = self.restricted_builtins() if python_guards else dict(vars(builtins))

    # -- output -----------------------------------------------------------------------------

    def send(self, message: Reply) -> None:
        data = (json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            written = os.write(self.protocol_out_fd, view)
            view = view[written:]

    def reset_stdio(self) -> None:
        # A mechanism may have replaced these; every call starts from fresh sinks.
        sys.stdout = CappedSink()
        sys.stderr = CappedSink()

    # -- loading ------------------------------------------------------------------------------

    def guarded_import(self, name: str, globals: Json = None, locals: Json = None, fromlist: Json = (),
                       level: int = 0) -> Any:
        if level != 0:
            raise ImportError("relative imports are not allowed in a mechanism")
        if name.partition(".")[0] not in self.allowed:
            raise ImportError("import of " + repr(name) + " is not allowed in a mechanism; allowed: "
                              + ", ".join(sorted(self.allowed)))
        return self.real_import(name, globals, locals, fromlist, level)

    def restricted_builtins(self) -> dict[str, Any]:
        names = dict(vars(builtins))
        for name in REMOVED_BUILTINS:
            names.pop(name, None)
        names["__import__"] = self.guarded_import
        return names

    def load(self, request_id: Json, request: Reply) -> Reply:
        if self.loaded:
            return {"ok": False, "kind": "protocol", "error": "mechanisms are loaded once per host; start a new host"}
        self.loaded = True
        if len(request.get("mechanisms", [])) != 1:
            return {"ok": False, "kind": "protocol", "error": "a host runs exactly one mechanism"}
        loaded: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        try:
            for spec in request.get("mechanisms", []):
                name = str(spec.get("name"))
                self.send({"id": request_id, "progress": [name, len(loaded) + len(errors)]})
                try:
                    instance = self.load_one(name, str(spec.get("class_name")), str(spec.get("code")))
                except BaseException as exc:  # anything a module does at import is its error
                    errors[name] = ((refusals() or "") + "\n" + describe_exception(exc)).strip()
                    continue
                refused = refusals()
                if refused:
                    errors[name] = refused
                    continue
                self.instances[name] = instance
                self.order.append(name)
                loaded[name] = [hook for hook in HOOK_NAMES if callable(getattr(instance, hook, None))]
        finally:
            if self.python_guards:
                sys.addaudithook(deny_code_loading)
        return {"ok": True, "value": {"loaded": loaded, "errors": errors}}

    def preload_allowed_modules(self, code_object: Any) -> None:
        """Import the allowed modules the code may name, while this process may still read files.

        Only those the code names (a superset: every name in it that is an allowed module), so a
        host starts without paying for modules its mechanism never imports.
        """
        pending = [code_object]
        while pending:
            current = pending.pop()
            for name in current.co_names:
                if name in self.allowed:
                    importlib.import_module(name)
            pending.extend(const for const in current.co_consts if hasattr(const, "co_names"))

    def load_one(self, name: str, class_name: str, code: str) -> object:
        filename = "<mechanism:" + name + ">"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        namespace = {"__name__": "mechanism_" + name, "__builtins__": self.mechanism_builtins}
        code_object = compile(code, filename, "exec")
        self.preload_allowed_modules(code_object)
        if self.python_guards:
            sys.addaudithook(deny_side_effects)
        self.reset_stdio()
        exec(code_object, namespace)
        cls = namespace.get(class_name)
        if not isinstance(cls, type):
            raise LookupError("the module defines no class named " + repr(class_name))
        return cls()

    # -- calls --------------------------------------------------------------------------------

    def call(self, name: str, hook: str, args: list[Json]) -> Reply:
        instance = self.instances.get(name)
        if instance is None:
            return {"ok": False, "kind": "protocol", "error": "no loaded mechanism named " + repr(name)}
        method = getattr(instance, hook, None) if hook in HOOK_NAMES else None
        if not callable(method):
            return {"ok": False, "kind": "missing_hook", "error": name + " has no hook " + repr(hook)}
        self.reset_stdio()
        REFUSED.clear()
        try:
            value = method(*args)
        except BaseException as exc:  # SystemExit and friends are the mechanism's errors too
            refused = refusals()
            return {"ok": False, "kind": "forbidden" if refused else "exception",
                    "error": (refused + "\n" if refused else "") + describe_exception(exc)}
        refused = refusals()
        if refused:
            return {"ok": False, "kind": "forbidden", "error": refused}
        return self.encode_value(value)

    def encode_value(self, value: object) -> Reply:
        try:
            text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            return {"ok": False, "kind": "bad_return", "error": "return value is not JSON: " + str(exc)[:500]}
        if len(text) > self.max_response_bytes:
            return {"ok": False, "kind": "bad_return",
                    "error": "response too large (" + str(len(text)) + " bytes > "
                    + str(self.max_response_bytes) + ")"}
        # Decoded again so the value sent is exactly what was checked (no lazy objects).
        return {"ok": True, "value": json.loads(text)}

    def replay(self, request_id: Json, request: Reply) -> Reply:
        trace = request.get("trace", [])
        state = request.get("state", {})
        names = [n for n in request.get("mechanisms", self.order) if n in self.instances]
        failed: dict[str, dict[str, Json]] = {}
        calls = 0
        for index, record in enumerate(trace):
            before = state_before(state, trace, index)
            for name in names:
                if name in failed or not callable(getattr(self.instances[name], "on_result", None)):
                    continue
                self.send({"id": request_id, "progress": [name, index]})
                response = self.call(name, "on_result", [copy.deepcopy(record), copy.deepcopy(before)])
                calls += 1
                if not response["ok"]:
                    failed[name] = {"index": index, "kind": response["kind"], "error": response["error"]}
                elif response["value"] is not None:
                    failed[name] = {"index": index, "kind": "bad_return", "error": "on_result must return None"}
        return {"ok": True, "value": {"calls": calls, "errors": failed}}

    def handle(self, request: Reply) -> Reply:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "value": "pong"}
        if op == "load":
            return self.load(request.get("id"), request)
        if op == "call":
            return self.call(str(request.get("mechanism")), str(request.get("hook")), list(request.get("args", [])))
        if op == "replay":
            return self.replay(request.get("id"), request)
        return {"ok": False, "kind": "protocol", "error": "unknown op " + repr(op)}


def best_of(trace: list[Reply]) -> Reply:
    best: Reply = {"val_bpb": None, "iteration": None}
    for record in trace:
        value = record.get("val_bpb")
        is_incumbent = record.get("status") in ("baseline", "keep") and value is not None
        if is_incumbent and (best["val_bpb"] is None or value < best["val_bpb"]):
            best = {"val_bpb": value, "iteration": record.get("iteration")}
    return best


def state_before(state: Reply, trace: list[Reply], index: int) -> Reply:
    """Same rule as protocol.state_before (kept in step by a test)."""
    earlier = trace[:index]
    rewound = dict(state)
    rewound["trace"] = earlier
    rewound["best"] = best_of(earlier)
    rewound["iteration"] = trace[index]["iteration"] if index < len(trace) else len(trace)
    return rewound


def describe_exception(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # Keep the mechanism's frames (the end of the traceback) when it is long.
    return text if len(text) <= ERROR_TEXT_LIMIT else "...\n" + text[-ERROR_TEXT_LIMIT:]


def apply_limits(limits: dict[str, int]) -> None:
    for name, value in (
        ("RLIMIT_AS", limits["address_space_bytes"]),
        ("RLIMIT_CPU", limits["cpu_seconds"]),
        ("RLIMIT_NOFILE", limits["open_files"]),
        ("RLIMIT_FSIZE", limits["file_size_bytes"]),
        ("RLIMIT_NPROC", 0),
        ("RLIMIT_CORE", 0),
    ):
        # Soft = hard, so the limit cannot be raised again (an unprivileged process never can).
        resource.setrlimit(getattr(resource, name), (value, value))


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def lock_down(program: bytes) -> None:
    """Install a seccomp filter on this process (a kernel filter: it can never be removed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_NO_NEW_PRIVS) failed: errno " + str(ctypes.get_errno()))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_SECCOMP) failed: errno " + str(ctypes.get_errno()))


PR_GET_SECCOMP = 21
SECCOMP_MODE_REPORTED_FILTER = 2


def confinement() -> dict[str, Any]:
    """Facts the parent checks before it trusts this process with mechanism code."""
    libc = ctypes.CDLL(None, use_errno=True)
    return {
        "seccomp": "filter" if libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == SECCOMP_MODE_REPORTED_FILTER else "none",
        # Names only. The interpreter sets LC_CTYPE when it coerces the C locale (PEP 538) and
        # bubblewrap sets PWD (/tmp); anything else came from outside.
        "environment": sorted(name for name in os.environ if name not in ("LC_CTYPE", "PWD")),
        "pid_namespace": 1 < os.getpid() < 10,
        "proc_visible": os.path.exists("/proc"),
        "uid": os.getuid(),
        "hostname": os.uname().nodename,
    }


def main(argv: list[str]) -> None:
    allowed = [name for name in argv[1].split(",") if name]
    limits = json.loads(argv[2])
    locked_program = bytes.fromhex(argv[3])
    # Off only in the isolation tests, to show that the kernel alone contains every attack.
    python_guards = argv[4] == "guards"
    apply_limits(limits)

    protocol_out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    requests = os.fdopen(os.dup(0), "rb")

    lock_down(locked_program)
    proven = confinement()
    host = Host(protocol_out_fd, allowed, limits["max_response_bytes"], python_guards)
    host.reset_stdio()
    # request_fd: the parent checks, while the host is stopped between calls, that it was blocked
    # reading this descriptor (told before any mechanism code runs, so it is the host's own word).
    host.send({"id": 0, "ok": True, "value": {"confinement": proven, "pid": os.getpid(),
                                              "request_fd": requests.fileno()}})
    for line in requests:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            host.send({"id": None, "ok": False, "kind": "protocol", "error": "request is not JSON"})
            continue
        response = host.handle(request)
        response["id"] = request.get("id")
        host.reset_stdio()
        host.send(response)


if __name__ == "__main__":
    main(sys.argv)
