"""Kernel isolation for the mechanism host: bubblewrap namespaces plus two seccomp filters.

Generated mechanism code is confined by the kernel, never by Python. Every host process runs as

    [as the unprivileged host uid, when the parent is root]
    bwrap <fresh user, pid, net, ipc, uts, cgroup namespaces; no nested user namespaces>
          <a root holding only the interpreter, its stdlib and the shared libraries they load,
           everything read-only, no writable directory at all; /dev with null, zero and urandom
           only; no /proc; an empty environment; a new session>
          --seccomp <the "start" filter>
          python -I -S -c <host_child.py> ...

Never root's powers: bubblewrap maps the sandbox user to the uid that starts it. Started by root,
that is real root, whose files (the host's own /dev/null among them) the sandbox could chmod,
chown, utime or replace. So a root parent starts bubblewrap through a setuid/setgid step to an
unprivileged uid (``SANDBOX_HOST_UID``, nobody by default, no supplementary groups): bubblewrap
then creates its user namespace as that user, exactly as when an unprivileged user starts it,
and the sandbox's uid 65534 is that unprivileged uid on the host. That user must be able to read
what the host runs, so the interpreter is one it can reach (``runtime()``: the parent's own, or
the system's interpreter of the same version when the parent's lives under a private home such as
/root/.pyenv). The parent checks the host's credentials on the host's side of the namespace
(/proc/<pid>/status: uids, gids, groups, capabilities) before it trusts the host with any code.

No writable filesystem: bubblewrap's --tmpfs takes a byte size but no inode limit, an unprivileged
parent cannot mount a tmpfs with nr_inodes itself, and no rlimit counts inodes; a host needs no
file (its Python guards refuse open, the interpreter writes no bytecode into a read-only
stdlib), so the scratch directory is gone rather than limited: the sandbox has zero writable
inodes, and a host creating empty files costs the machine nothing.

and, before any mechanism code runs, the host installs the "locked" filter on itself, which adds
``execve``/``execveat`` (bubblewrap itself needs ``execve`` to start the interpreter, so that one
syscall can only be closed from inside). Both filters are compiled here with libseccomp
(``pyseccomp``) and are kernel filters: nothing in the process can remove them.

Fail closed: when bubblewrap or libseccomp is missing, or the namespaces cannot be created on this
machine, ``isolation_status()`` says why in one sentence and the host refuses to start, so Level 2
loads no generated code at all (Levels 1 and 1.5 do not need it).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

SANDBOX_ID = 65534  # the uid/gid the host sees inside its user namespace (nobody/nogroup)
# The host-side uid/gid a root parent drops to before starting bubblewrap (nobody/nogroup: it owns
# no file). Override with BILEVEL_SANDBOX_HOST_UID / _GID (a uid that owns nothing, never 0).
SANDBOX_HOST_UID = int(os.environ.get("BILEVEL_SANDBOX_HOST_UID", "65534"))
SANDBOX_HOST_GID = int(os.environ.get("BILEVEL_SANDBOX_HOST_GID", "65534"))
IOCTL_REQUEST_MASK = 0xFFFFFFFF  # the kernel reads an ioctl request as a 32-bit unsigned int
# Terminal ioctls that inject input or reach the console; there is no terminal, refuse anyway.
REFUSED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}

# Fatal (the kernel kills the whole host with SIGSYS) from the moment bubblewrap hands over to
# the interpreter: nothing the host or an allowed module does needs them, so reaching one is an
# attack, and a dead host is a reason a reviewer can read, where an error code could be
# swallowed by the mechanism and go unseen. Process and thread creation,
# signals to anyone, sockets of every family, tracing, device nodes and FIFOs, mounts and
# namespaces, kernel keyrings, eBPF, perf, io_uring, module loading, clocks, and the handle
# and pidfd calls that reach outside the mount and pid namespaces.
DENIED_AT_START: tuple[str, ...] = (
    "execveat", "fork", "vfork", "clone", "clone3",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "sendmsg", "sendmmsg",
    "recvfrom", "recvmsg", "recvmmsg", "getsockopt", "setsockopt", "shutdown",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "process_madvise",
    "mknod", "mknodat",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsmount", "fsconfig", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup", "uselib", "personality",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "fanotify_init", "memfd_create", "memfd_secret",
    "move_pages", "migrate_pages", "iopl", "ioperm", "modify_ldt",
)
# Added (also fatal) by the host itself once the interpreter runs, before any mechanism code loads.
DENIED_WHEN_LOCKED: tuple[str, ...] = ("execve", "execveat")

LAYERS = ("user-namespace (the sandbox user is an unprivileged host uid)", "pid-namespace",
          "net-namespace (no interfaces but a private lo)", "ipc-namespace", "uts-namespace",
          "read-only minimal root, no writable directory", "no /proc",
          "devices: null, zero, urandom (host nodes the sandbox user does not own)", "empty environment",
          "new session", "stopped between calls",
          "seccomp: no exec, processes, signals, sockets, ptrace, mknod, mount, namespaces, bpf, perf, keyctl",
          "rlimits")


class IsolationUnavailable(Exception):
    """Kernel isolation cannot be set up here; the message is one sentence a user can act on."""


@dataclass(frozen=True)
class IsolationStatus:
    available: bool
    reason: str  # why not, in one sentence; "" when available
    checked_at: float


def _seccomp_program(denied: tuple[str, ...]) -> bytes:
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # the binding loads libseccomp.so.2 at import
        raise IsolationUnavailable(f"libseccomp is not usable ({exc}); install the Debian package libseccomp2 "
                                   f"and the Python package pyseccomp") from exc
    # Default allow, these calls kill the process; a syscall of another ABI (i386, x32) kills too.
    seccomp_filter = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in denied:
        try:
            seccomp_filter.add_rule(pyseccomp.KILL_PROCESS, name)
        except (ValueError, RuntimeError, OSError):
            continue  # a syscall this architecture does not have
    # TIOCSTI would type into a terminal; there is none (new session, no /dev/tty), refuse anyway.
    # The kernel truncates the request to 32 bits, so the rule compares those bits only: a request
    # with high bits set (0x100005412) is the same ioctl to the kernel and must meet the same rule.
    for request in REFUSED_IOCTLS.values():
        seccomp_filter.add_rule(pyseccomp.ERRNO(errno.EPERM), "ioctl",
                                pyseccomp.Arg(1, pyseccomp.MASKED_EQ, IOCTL_REQUEST_MASK, request))
    with tempfile.TemporaryFile() as out:
        seccomp_filter.export_bpf(out)
        out.seek(0)
        return out.read()


@functools.lru_cache(maxsize=1)
def seccomp_programs() -> tuple[bytes, bytes]:
    """(start filter for bubblewrap, locked filter the host installs on itself)."""
    return _seccomp_program(DENIED_AT_START), _seccomp_program(DENIED_WHEN_LOCKED)


def host_credentials() -> tuple[int, int] | None:
    """(uid, gid) to start bubblewrap as, or None to start it as the parent's own user.

    Only a root parent changes user: bubblewrap maps the sandbox user to whoever starts it, and
    that must never be root. An unprivileged parent's own uid is already unprivileged.
    """
    if os.geteuid() != 0 and os.getuid() != 0:
        return None
    if SANDBOX_HOST_UID == 0 or SANDBOX_HOST_GID == 0:
        raise IsolationUnavailable("BILEVEL_SANDBOX_HOST_UID/GID must name an unprivileged user, not root")
    return SANDBOX_HOST_UID, SANDBOX_HOST_GID


def reachable_by(path: str, uid: int, gid: int, execute: bool = False) -> bool:
    """Whether a process of uid/gid (no supplementary groups) can read (and run) path.

    Checked from the permission bits of the path and every directory above it; a root parent's
    own access says nothing about the user the host runs as.
    """
    def allowed(info: os.stat_result, want: int) -> bool:
        shift = 6 if info.st_uid == uid else 3 if info.st_gid == gid else 0
        return (stat.S_IMODE(info.st_mode) >> shift) & want == want

    real = os.path.realpath(path)
    try:
        parts = real.split(os.sep)
        for depth in range(1, len(parts)):
            directory = os.sep.join(parts[:depth]) or os.sep
            if not allowed(os.stat(directory), 0o1):
                return False
        return allowed(os.stat(real), 0o5 if execute else 0o4)
    except OSError:
        return False


@dataclass(frozen=True)
class Runtime:
    """The interpreter the host runs, with its stdlib and extension-module directories."""

    interpreter: str
    stdlib: str
    dynload: str


_RUNTIME_QUERY = ("import json, os, sys, sysconfig; print(json.dumps([os.path.realpath(sys.executable), "
                  "os.path.dirname(os.path.realpath(os.__file__)), sysconfig.get_config_var('DESTSHARED') or '']))")


def _own_runtime() -> Runtime:
    return Runtime(os.path.realpath(sys.executable), os.path.dirname(os.path.realpath(os.__file__)),
                   sysconfig.get_config_var("DESTSHARED") or "")


def _runtime_readable(candidate: Runtime, credentials: tuple[int, int] | None) -> bool:
    if credentials is None:
        return True
    uid, gid = credentials
    return (reachable_by(candidate.interpreter, uid, gid, execute=True) and reachable_by(candidate.stdlib, uid, gid)
            and (not candidate.dynload or reachable_by(candidate.dynload, uid, gid)))


@functools.lru_cache(maxsize=1)
def runtime() -> Runtime:
    """The parent's own interpreter when the host's user can read it, else the system's of the same version.

    The host runs only the standard library (-I -S), so any build of the same Python version serves.
    """
    credentials = host_credentials()
    own = _own_runtime()
    if _runtime_readable(own, credentials):
        return own
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/bin", "/usr/local/bin", "/bin"):
        candidate_path = os.path.join(directory, version)
        if not os.path.isfile(candidate_path):
            continue
        query = subprocess.run([candidate_path, "-I", "-S", "-c", _RUNTIME_QUERY], capture_output=True, text=True,
                               check=False, env={}, timeout=60)
        if query.returncode != 0:
            continue
        candidate = Runtime(*json.loads(query.stdout))
        if _runtime_readable(candidate, credentials):
            return candidate
    uid = credentials[0] if credentials else os.getuid()
    raise IsolationUnavailable(
        f"the interpreter {own.interpreter} is not readable by the sandbox's user (uid {uid}) and no {version} "
        f"readable by it was found; install the Debian package {version} or make the interpreter's directories "
        f"readable by others")


def interpreter() -> str:
    """The real interpreter the host runs (never a virtualenv's: the host runs with -I -S, no site-packages)."""
    return runtime().interpreter


def _stdlib_dir() -> str:
    return runtime().stdlib


_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


@functools.lru_cache(maxsize=1)
def shared_libraries() -> tuple[str, ...]:
    """Every shared library the interpreter and its stdlib extension modules link against."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise IsolationUnavailable("ldd is missing, so the interpreter's libraries cannot be listed; "
                                   "install the Debian package libc-bin")
    dynload = runtime().dynload or os.path.join(_stdlib_dir(), "lib-dynload")
    modules = sorted(str(p) for p in Path(dynload).glob("*.so")) if os.path.isdir(dynload) else []
    result = subprocess.run([ldd, interpreter(), *modules], capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=60)
    libraries = {match.group(1) for line in result.stdout.splitlines() if (match := _LDD_LINE.match(line))}
    return tuple(sorted(libraries))


def _read_only_binds() -> list[str]:
    stdlib = _stdlib_dir()
    args = ["--ro-bind", interpreter(), interpreter(), "--ro-bind", stdlib, stdlib]
    dynload = runtime().dynload
    if dynload and os.path.isdir(dynload) and not dynload.startswith(stdlib + os.sep):
        args += ["--ro-bind", dynload, dynload]
    for library in shared_libraries():
        # The loader looks a library up by the path ldd printed; bind the file it resolves to there.
        args += ["--ro-bind", os.path.realpath(library), library]
    # Third-party packages beside the stdlib are not part of a mechanism's world.
    for name in ("site-packages", "dist-packages"):
        hidden = os.path.join(stdlib, name)
        if os.path.isdir(hidden):
            args += ["--tmpfs", hidden, "--remount-ro", hidden]
    return args


def bwrap_command(seccomp_fd: int) -> list[str]:
    """The bubblewrap prefix; the interpreter's argv follows it."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise IsolationUnavailable("bubblewrap is not installed; install the Debian package bubblewrap "
                                   "(python3 bootstrap.py up does this when run as root)")
    return [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--disable-userns",
        "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), "--hostname", "mechanism-host",
        "--die-with-parent", "--new-session", "--clearenv",
        *_read_only_binds(),
        # The host's own nodes (a sandbox cannot mknod): owned by root, whom the sandbox user never
        # is (see host_credentials), so it can open them but not chmod, chown, utime or replace them.
        "--dir", "/dev",
        "--dev-bind", "/dev/null", "/dev/null",
        "--dev-bind", "/dev/zero", "/dev/zero",
        "--dev-bind", "/dev/urandom", "/dev/urandom",
        "--dir", "/tmp",
        "--chdir", "/tmp",
        "--remount-ro", "/",
        "--seccomp", str(seccomp_fd),
        "--",
    ]


def seccomp_pipe(program: bytes) -> int:
    """A readable fd holding the program (bubblewrap reads it to EOF); the caller closes it after spawn."""
    read_fd, write_fd = os.pipe()
    # A filter is a few hundred bytes, far below the pipe buffer: the write never blocks.
    os.write(write_fd, program)
    os.close(write_fd)
    return read_fd
