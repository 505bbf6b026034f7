"""Kernel isolation for the mechanism host: bubblewrap namespaces plus two seccomp filters.

Generated mechanism code is confined by the kernel, never by Python. Every host process runs as

    bwrap <fresh user, pid, net, ipc, uts, cgroup namespaces; no nested user namespaces>
          <a root holding only the interpreter, its stdlib and the shared libraries they load,
           read-only; a small private tmpfs at /tmp; /dev with null, zero and urandom only;
           no /proc; an empty environment; a new session>
          --seccomp <the "start" filter>
          python -I -S -c <host_child.py> ...

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
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

SANDBOX_ID = 65534  # the uid/gid the host sees inside its user namespace (nobody/nogroup)
SCRATCH_BYTES = 8 * 1024 * 1024

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

LAYERS = ("user-namespace", "pid-namespace", "net-namespace (no interfaces but a private lo)",
          "ipc-namespace", "uts-namespace", "read-only minimal root", "private tmpfs", "no /proc",
          "devices: null, zero, urandom", "empty environment", "new session",
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
    seccomp_filter.add_rule(pyseccomp.ERRNO(errno.EPERM), "ioctl", pyseccomp.Arg(1, pyseccomp.EQ, 0x5412))
    with tempfile.TemporaryFile() as out:
        seccomp_filter.export_bpf(out)
        out.seek(0)
        return out.read()


@functools.lru_cache(maxsize=1)
def seccomp_programs() -> tuple[bytes, bytes]:
    """(start filter for bubblewrap, locked filter the host installs on itself)."""
    return _seccomp_program(DENIED_AT_START), _seccomp_program(DENIED_WHEN_LOCKED)


def interpreter() -> str:
    """The real interpreter behind a virtualenv; the host runs it with -I -S, so no site-packages."""
    return os.path.realpath(sys.executable)


def _stdlib_dir() -> str:
    return os.path.dirname(os.path.realpath(os.__file__))


_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


@functools.lru_cache(maxsize=1)
def shared_libraries() -> tuple[str, ...]:
    """Every shared library the interpreter and its stdlib extension modules link against."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise IsolationUnavailable("ldd is missing, so the interpreter's libraries cannot be listed; "
                                   "install the Debian package libc-bin")
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(_stdlib_dir(), "lib-dynload")
    modules = sorted(str(p) for p in Path(dynload).glob("*.so")) if os.path.isdir(dynload) else []
    result = subprocess.run([ldd, interpreter(), *modules], capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=60)
    libraries = {match.group(1) for line in result.stdout.splitlines() if (match := _LDD_LINE.match(line))}
    return tuple(sorted(libraries))


def _read_only_binds() -> list[str]:
    stdlib = _stdlib_dir()
    args = ["--ro-bind", interpreter(), interpreter(), "--ro-bind", stdlib, stdlib]
    dynload = sysconfig.get_config_var("DESTSHARED")
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
        "--dir", "/dev",
        "--dev-bind", "/dev/null", "/dev/null",
        "--dev-bind", "/dev/zero", "/dev/zero",
        "--dev-bind", "/dev/urandom", "/dev/urandom",
        "--size", str(SCRATCH_BYTES), "--tmpfs", "/tmp",
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
