"""Warm trainer workers: torch and the corpus loaded once, each training a fresh fork of them.

A *zygote* (``python -m trainer.warm FD``) is started once per launching process. It imports
torch and the trainer, loads the embedded corpus and triggers torch's lazy imports, then waits on
a Unix socket. For each training the launcher sends the ``python -m trainer`` arguments with the
stdout pipe and the stderr file as file descriptors; the zygote forks, and the child becomes
exactly what a cold ``python -m trainer`` would be after its imports: it starts its own session
(so a timeout kills its whole process group), dies with the zygote, runs ``trainer.__main__.main``
and leaves with ``os._exit`` (no interpreter teardown). The zygote reaps it and reports its exit
status, so the launcher sees the same pid / stdout / returncode contract as with a subprocess.

Isolation between trainings is the kernel's: every training is a new process with copy-on-write
memory, seeded from scratch, so no model, optimizer, RNG or leaked memory survives it. The
zygote never runs a parallel torch op (that would start an OpenMP pool that a fork cannot
inherit) and never touches CUDA (a CUDA context does not survive a fork): both happen in the
child, as in a cold start, which is why warm results are bit-identical to cold ones.

The client side (``WarmTrainer``) does not import torch. One zygote serves one training at a
time. Each child gets the environment of its request; the zygote is keyed by that environment
less the ``BILEVEL_*`` variables (which only this project reads, at run time) and pytest's
per-test ``PYTEST_CURRENT_TEST``, because torch and its libraries read other variables when they
load: it is replaced when those change or it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 120.0
MESSAGE_BYTES = 65536
WARM_ENV = "BILEVEL_TRAINER_WARM"
RUNTIME_ENV_PREFIX = "BILEVEL_"
RUNTIME_ENV_NAMES = ("PYTEST_CURRENT_TEST",)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the thread that started it dies.

    Trainers run in their own session (so a timeout can kill their whole group), which also
    means a SIGKILLed worker would otherwise leave them running as orphans.
    """
    parent = os.getppid()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def warm_enabled() -> bool:
    """Warm workers are the default; ``BILEVEL_TRAINER_WARM=0`` starts every training cold."""
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def import_time_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that a zygote must have had when it loaded torch."""
    return {
        name: value
        for name, value in env.items()
        if not name.startswith(RUNTIME_ENV_PREFIX) and name not in RUNTIME_ENV_NAMES
    }


# --- the zygote (server side) -------------------------------------------------------------------


def _preload() -> None:
    """Everything a training imports or reads before its first step, done once."""
    from trainer.__main__ import prepare_environment

    prepare_environment()  # before torch loads: OpenMP and cuBLAS read these at load time
    import torch

    import trainer.train  # noqa: F401  (the model, optimizer and loop modules)
    from trainer.corpus import CorpusError, load_corpus

    # A missing corpus package is each training's error to report (as a cold start would), not a
    # reason for the zygote to fail and be restarted before every training.
    with contextlib.suppress(CorpusError):
        load_corpus()
    # The first optimizer built in a process imports torch._dynamo (~1-3 s); a one-element
    # parameter triggers that without running a parallel op.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def _run_child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become a trainer process. Never returns."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        stdout_fd, stderr_fd = fds
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.close(stdout_fd)
        os.close(stderr_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from trainer.__main__ import main

        code = main(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a crash must still end this process, never fall back into the zygote's loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(channel: socket.socket) -> None:
    """The zygote's loop: one request, one fork, its pid, then its exit status; until the launcher goes."""
    _preload()
    channel.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    while True:
        data, fds, _, _ = socket.recv_fds(channel, MESSAGE_BYTES, 2)
        if not data:
            return  # the launcher closed its end
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            channel.close()
            _run_child(request, fds)
        for fd in fds:
            os.close(fd)
        channel.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        channel.send(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())


# --- the launcher's side ------------------------------------------------------------------------


class ZygoteError(RuntimeError):
    """The zygote did not answer as expected; it is discarded and the training may start cold."""


class WarmChild:
    """A forked training as the launcher sees it: the ``subprocess.Popen`` attributes it uses."""

    def __init__(self, zygote: Zygote, pid: int, stdout: Any) -> None:
        self.zygote = zygote
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self.zygote.wait_exit(self.pid, timeout)
            except ZygoteError:
                # The zygote is gone or confused; its death SIGKILLs this child (PR_SET_PDEATHSIG).
                self.zygote.broken = True
                self.returncode = -signal.SIGKILL
        return self.returncode


class Zygote:
    """One zygote process and the socket to it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.key = import_time_env(env)
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ready = False
        self.broken = False  # set when it answered out of turn or failed to fork: replaced before the next use
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trainer.warm", str(theirs.fileno())],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a trainer's group kill or a terminal's Ctrl-C must not reach it
                preexec_fn=die_with_parent,
            )
        finally:
            theirs.close()

    def _receive(self, timeout: float | None) -> dict[str, Any]:
        self.channel.settimeout(timeout)
        try:
            data = self.channel.recv(MESSAGE_BYTES)
        except TimeoutError:
            raise  # a TimeoutError is an OSError too: the callers decide what a timeout means
        except OSError as exc:
            raise ZygoteError(f"the trainer zygote's socket failed: {exc}") from exc
        if not data:
            raise ZygoteError(f"the trainer zygote exited ({self.process.poll()})")
        message: dict[str, Any] = json.loads(data)
        return message

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        if not self.ready:
            try:
                self._receive(timeout)
            except TimeoutError:
                raise ZygoteError(f"the trainer zygote was not ready after {timeout:g} s") from None
            self.ready = True

    def spawn(
        self, argv: list[str], *, cwd: Path, env: Mapping[str, str], stdout_fd: int, stderr_fd: int, stdout: Any
    ) -> WarmChild:
        self.wait_ready()
        request = json.dumps({"argv": argv, "cwd": str(cwd), "env": dict(env)}).encode()
        if len(request) >= MESSAGE_BYTES:
            raise ZygoteError(f"the request ({len(request)} bytes, mostly environment) exceeds {MESSAGE_BYTES}")
        try:
            socket.send_fds(self.channel, [request], [stdout_fd, stderr_fd])
            reply = self._receive(READY_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as exc:
            raise ZygoteError(f"the trainer zygote did not fork: {exc}") from exc
        return WarmChild(self, int(reply["pid"]), stdout)

    def wait_exit(self, pid: int, timeout: float | None) -> int:
        try:
            message = self._receive(timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(f"trainer {pid}", timeout or 0.0) from None
        if message.get("pid") != pid or "returncode" not in message:
            raise ZygoteError(f"the trainer zygote reported {message}, expected the exit of {pid}")
        return int(message["returncode"])

    def alive(self) -> bool:
        return not self.broken and self.process.poll() is None

    def close(self) -> None:
        self.channel.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()


class WarmTrainer:
    """The launching process's zygote, started on first use (or by ``prestart``) and reused.

    ``acquire`` hands out the zygote to one training at a time; a second concurrent training in
    the same process gets ``None`` and starts cold.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: Zygote | None = None

    def prestart(self, env: Mapping[str, str], *, wait: bool = False) -> None:
        """Start the zygote now, so the first training finds it warm; ``wait`` until it is ready."""
        with self._lock:
            zygote = self._ensure(env)
            if wait:
                zygote.wait_ready()

    def _ensure(self, env: Mapping[str, str]) -> Zygote:
        zygote = self._zygote
        if zygote is not None and (zygote.key != import_time_env(env) or not zygote.alive()):
            zygote.close()
            zygote = None
        if zygote is None:
            zygote = self._zygote = Zygote(env)
        return zygote

    @contextlib.contextmanager
    def acquire(self, env: Mapping[str, str]) -> Any:
        """Yield a ready zygote for ``env``, or ``None`` if one is busy or cannot be started."""
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            try:
                zygote = self._ensure(env)
                zygote.wait_ready()
            except (OSError, ZygoteError) as exc:
                sys.stderr.write(f"warm trainer unavailable, starting cold: {exc}\n")
                self.discard()
                yield None
                return
            yield zygote
        finally:
            self._lock.release()

    def discard(self) -> None:
        """Forget a zygote that misbehaved (or is no longer wanted); the next training starts a new one."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None


WARM_TRAINER = WarmTrainer()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
