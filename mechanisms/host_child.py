"""The mechanism host: the sandboxed child process that runs generated mechanism code.

Standalone on purpose: it imports only the standard library and never the project, because it
runs untrusted code and must not have project code (settings, clients, keys) in its memory.
`sandbox.MechanismHost` starts it as

    python -I -S -c <this source> <allowed,modules> <uid> <gid> <limits json>

and talks JSON lines over stdin/stdout. Start-up, in order (nothing untrusted runs before 5):

1. apply resource limits to itself (address space, CPU, files, file size, no child processes);
2. move the protocol to a private duplicate of stdout; fd 1 becomes /dev/null, and sys.stdout
   and sys.stderr become capped in-memory sinks, so a mechanism's print cannot corrupt it;
3. import the allowed modules (they read their source now, while files may still be opened);
4. drop root to the given unprivileged uid/gid (the interpreter is often under /root, which
   an unprivileged user cannot read, so dropping before step 3 would fail);
5. install an audit hook that refuses files, imports, processes, signals, sockets, ctypes and
   the like. It is a pure function of the event name (constants only, no globals it relies
   on), so code in this process cannot switch it off by rebinding names; audit hooks cannot be
   removed. After the one `load`, a second hook refuses compile/exec as well.

Requests: {"id", "op": "ping"|"load"|"call"|"replay", ...}. Responses: {"id", "ok": true,
"value"} or {"id", "ok": false, "error", "kind"}; during replay, {"id", "progress": [name, i]}
lines announce each module load and on_result call, so the parent can blame the right mechanism
on a timeout.
Once mechanism code has run, this process is assumed hostile: the parent validates every line.
"""

from __future__ import annotations

import builtins
import copy
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


def deny_side_effects(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook armed before any mechanism code runs. Constants only: see the module doc."""
    if event == "open" or event == "import":
        raise PermissionError("mechanism sandbox: " + event + " is not allowed")
    if event.startswith((
        "os.", "subprocess.", "socket.", "ctypes.", "shutil.", "tempfile.", "glob.", "pty.", "fcntl.",
        "resource.", "signal.", "mmap.", "gc.", "marshal.", "pickle.", "shelve.", "dbm.", "sqlite3.",
        "urllib.", "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.",
        "webbrowser.", "syslog.", "cpython.", "winreg.", "msvcrt.", "_winapi.", "ensurepip.",
    )):
        raise PermissionError("mechanism sandbox: " + event + " is not allowed")
    if event in {"code.__new__", "function.__new__", "builtins.input", "sys._current_frames",
                 "_thread.start_new_thread"}:
        raise PermissionError("mechanism sandbox: " + event + " is not allowed")
    # Setting __code__/__defaults__ of a function (or dunders of a class) could rewrite this hook.
    if (event == "object.__setattr__" or event == "object.__delattr__") and args[1][:2] == "__":
        raise PermissionError("mechanism sandbox: setting " + args[1] + " is not allowed")


def deny_code_loading(event: str, args: tuple[Any, ...]) -> None:
    """Second audit hook, armed after the mechanisms are loaded: no new code may be compiled."""
    if event == "compile" or event == "exec":
        raise PermissionError("mechanism sandbox: dynamic code (" + event + ") is not allowed")


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
    def __init__(self, protocol_out_fd: int, allowed: list[str], max_response_bytes: int) -> None:
        self.protocol_out_fd = protocol_out_fd
        self.allowed = frozenset(allowed)
        self.max_response_bytes = max_response_bytes
        self.instances: dict[str, object] = {}
        self.order: list[str] = []
        self.loaded = False
        self.real_import = builtins.__import__
        self.mechanism_builtins = self.restricted_builtins()

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
        loaded: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        try:
            for spec in request.get("mechanisms", []):
                name = str(spec.get("name"))
                self.send({"id": request_id, "progress": [name, len(loaded) + len(errors)]})
                try:
                    instance = self.load_one(name, str(spec.get("class_name")), str(spec.get("code")))
                except BaseException as exc:  # anything a module does at import is its error
                    errors[name] = describe_exception(exc)
                    continue
                self.instances[name] = instance
                self.order.append(name)
                loaded[name] = [hook for hook in HOOK_NAMES if callable(getattr(instance, hook, None))]
        finally:
            sys.addaudithook(deny_code_loading)
        return {"ok": True, "value": {"loaded": loaded, "errors": errors}}

    def load_one(self, name: str, class_name: str, code: str) -> object:
        filename = "<mechanism:" + name + ">"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        namespace = {"__name__": "mechanism_" + name, "__builtins__": self.mechanism_builtins}
        self.reset_stdio()
        exec(compile(code, filename, "exec"), namespace)
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
        try:
            value = method(*args)
        except BaseException as exc:  # SystemExit and friends are the mechanism's errors too
            return {"ok": False, "kind": "exception", "error": describe_exception(exc)}
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


def drop_privileges(uid: int, gid: int) -> bool:
    if uid < 0 or os.geteuid() != 0:
        return False
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("could not drop privileges")
    return True


def main(argv: list[str]) -> None:
    allowed = [name for name in argv[1].split(",") if name]
    uid, gid = int(argv[2]), int(argv[3])
    limits = json.loads(argv[4])
    apply_limits(limits)

    protocol_out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    requests = os.fdopen(os.dup(0), "rb")

    for name in allowed:
        importlib.import_module(name)
    importlib.import_module("collections.abc")
    dropped = drop_privileges(uid, gid)
    host = Host(protocol_out_fd, allowed, limits["max_response_bytes"])
    sys.addaudithook(deny_side_effects)
    host.reset_stdio()
    host.send({"id": 0, "ok": True, "value": {"uid": os.getuid(), "dropped_privileges": dropped,
                                              "audit_hook": True, "pid": os.getpid()}})
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError:
            host.send({"id": None, "ok": False, "kind": "protocol", "error": "request is not JSON"})
            continue
        response = host.handle(request)
        response["id"] = request.get("id")
        host.reset_stdio()
        host.send(response)


if __name__ == "__main__":
    main(sys.argv)
