"""Supervision of the launcher's children: a child that dies is restarted with backoff.

Each death is reported once, with its real cause (exit code or signal) and the last lines that
*this instance* wrote to its log (logs are appended across restarts and launches). Children
that need Redis are restarted only once Redis answers again. A child that keeps crashing
(MAX_CRASHES within CRASH_WINDOW_SECONDS) is given up on, and the launcher stops, naming it.
While anything is down or restarting, a status file says so; the web pages read it and show
that the back end is recovering.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .process_tools import die_with_parent

MAX_CRASHES = 5
CRASH_WINDOW_SECONDS = 120.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 15.0
LOG_TAIL_LINES = 15


class GiveUp(Exception):
    """A child crashed too often: the launcher stops and says which one and why."""


@dataclass
class Child:
    name: str
    argv: list[str]
    stop_signal: int = signal.SIGTERM
    needs_redis: bool = False
    # How to tell the child is serving again: it accepts connections on this port, or its log
    # (this instance's part) contains this line fragment.
    ready_port: int | None = None
    ready_marker: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    log_offset: int = 0
    ready: bool = False
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    down_since: float | None = None
    cause: str = ""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name} (signal {number})"
    if returncode == 0:
        return "exited with code 0, although it should run until stopped"
    return f"exited with code {returncode}"


def explain(returncode: int) -> str:
    """What the cause means for reading the log tail."""
    if returncode == -signal.SIGKILL:
        return " (SIGKILL cannot be caught, so its log ends mid-work: a person or the out-of-memory killer sent it)"
    return ""


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Supervisor:
    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        cwd: Path,
        status_file: Path,
        say: Callable[[str], None],
        warn: Callable[[str], None],
        on_back: Callable[[Child], None] = lambda child: None,
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.cwd = cwd
        self.status_file = status_file
        self.say = say
        self.warn = warn
        self.on_back = on_back
        self.children: list[Child] = []
        status_file.unlink(missing_ok=True)  # left by a launcher that was killed

    # -- starting and reading ----------------------------------------------------------------

    def start(self, child: Child) -> None:
        if child not in self.children:
            self.children.append(child)
        child.log_path = self.log_dir / f"{child.name}.log"
        with open(child.log_path, "ab") as log:
            child.log_offset = log.tell()
            child.process = subprocess.Popen(
                child.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent, cwd=self.cwd,
            )
        child.ready = False
        self.say(f"started {child.name} (pid {child.process.pid}, log {child.log_path})")

    def instance_log(self, child: Child) -> str:
        """What the current (or just dead) instance of the child wrote to its log."""
        if child.log_path is None or not child.log_path.exists():
            return ""
        with open(child.log_path, "rb") as log:
            log.seek(child.log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, child: Child, lines: int = LOG_TAIL_LINES) -> str:
        tail = self.instance_log(child).splitlines()[-lines:]
        return "\n".join(tail) if tail else "(it wrote nothing to its log)"

    def alive(self, child: Child) -> bool:
        return child.process is not None and child.process.poll() is None

    def all_alive(self) -> bool:
        return all(self.alive(c) for c in self.children)

    def is_ready(self, child: Child) -> bool:
        if not self.alive(child):
            return False
        if child.ready_port is not None:
            return port_accepts(child.ready_port)
        if child.ready_marker is not None:
            return child.ready_marker in self.instance_log(child)
        return True

    # -- supervision ---------------------------------------------------------------------------

    def tick(self) -> None:
        """One supervision pass: notice deaths, restart what is due, notice who is back."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and not self.alive(child):
                self._died(child, now)
        redis_ready = all(c.ready for c in self.children if c.name == "redis")
        for child in self.children:
            if child.restart_at is not None and now >= child.restart_at and (redis_ready or not child.needs_redis):
                child.restart_at = None
                child.restarts += 1
                self.start(child)
        for child in self.children:
            if child.restart_at is None and not child.ready and self.is_ready(child):
                child.ready = True
                if child.down_since is not None:
                    downtime = now - child.down_since
                    self.say(f"{child.name} is back (pid {self._pid(child)}, {downtime:.1f} s after it died)")
                    child.down_since = None
                    self.on_back(child)
        self._write_status()

    def _died(self, child: Child, now: float) -> None:
        assert child.process is not None
        pid, cause = child.process.pid, describe_exit(child.process.returncode)
        hint = explain(child.process.returncode)
        # What the dead child left in its group (a Celery pool process, a trainer) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        child.ready = False
        child.down_since = now
        child.cause = cause
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > CRASH_WINDOW_SECONDS:
            child.crashes.popleft()
        tail = self.log_tail(child)
        if len(child.crashes) >= MAX_CRASHES:
            raise GiveUp(
                f"{child.name} (pid {pid}) {cause}{hint}. It crashed {len(child.crashes)} times within "
                f"{CRASH_WINDOW_SECONDS:.0f} s, so it is not restarted again. Its last log lines:\n{tail}"
            )
        delay = min(FIRST_BACKOFF_SECONDS * 2 ** (len(child.crashes) - 1), MAX_BACKOFF_SECONDS)
        child.restart_at = now + delay
        waits = " once Redis is back" if child.needs_redis and any(
            c.name == "redis" and not c.ready for c in self.children
        ) else ""
        self.warn(
            f"{child.name} (pid {pid}) {cause}{hint}. Restarting it in {delay:.1f} s{waits}; "
            f"the other parts keep running. Its last log lines:\n{tail}"
        )

    @staticmethod
    def _pid(child: Child) -> int | None:
        return child.process.pid if child.process is not None else None

    def _write_status(self) -> None:
        recovering = [{"part": c.name, "cause": c.cause} for c in self.children if c.down_since is not None]
        if recovering:
            # Replace, never rewrite in place: the web server may read it at any moment.
            draft = self.status_file.with_suffix(".tmp")
            draft.write_text(json.dumps({"recovering": recovering}))
            os.replace(draft, self.status_file)
        else:
            self.status_file.unlink(missing_ok=True)

    def stop_all(self, kill: Callable[[subprocess.Popen[bytes], int], None]) -> None:
        # Reverse start order: workers first (cold shutdown: the in-flight step's lease expires
        # and the step is retried on the next start), then the web server, Redis last.
        for child in reversed(self.children):
            if self.alive(child):
                assert child.process is not None
                kill(child.process, child.stop_signal)
                self.say(f"stopped {child.name}")
        self.status_file.unlink(missing_ok=True)
