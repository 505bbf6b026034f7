"""Shared test base: users of different permissions and real services started per test.

Services are real: the database the suite runs on (PostgreSQL in CI), Redis (REDIS_URL, set
by `bootstrap.py test`), Celery workers and the ASGI server started as subprocesses against
the test database, and Debian Chromium driven by Playwright.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Playwright's sync API runs an event loop in the test thread; the ORM calls our tests make
# there are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PASSWORD = "correct-horse-battery-staple-42"


@dataclass
class Users:
    plain: Any
    reviewer: Any
    admin: Any


@pytest.fixture
def users(django_user_model: Any) -> Users:
    """A plain user, a reviewer (may approve mechanisms) and a superuser, all with PASSWORD."""
    from django.contrib.auth.models import Permission

    plain = django_user_model.objects.create_user("plain", password=PASSWORD)
    reviewer = django_user_model.objects.create_user("reviewer", password=PASSWORD)
    reviewer.user_permissions.add(Permission.objects.get(codename="review_mechanism"))
    admin = django_user_model.objects.create_superuser("root", password=PASSWORD)
    return Users(plain=plain, reviewer=reviewer, admin=admin)


def child_env() -> dict[str, str]:
    """Environment for servers and workers started by a test: same settings, the *test* database."""
    from django.db import connection

    env = os.environ.copy()
    # The suite runs as root in CI and starts its workers directly; the product's launcher gives root up.
    env["BILEVEL_ALLOW_ROOT_WORKER"] = "1"
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        if "memory" in str(db["NAME"]):
            raise RuntimeError("servers and workers started by tests need a file database: set BILEVEL_TEST_SQLITE")
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
        env.pop("BILEVEL_TEST_SQLITE", None)
    else:
        user = db.get("USER") or "postgres"
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """The real Redis, emptied so no queued task or channel message leaks between tests."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class ServiceProcess:
    """A server or worker subprocess with its output kept in a log file for failure reports."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        from runs.ops.process_tools import die_with_parent

        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, first_signal: int | None = None) -> None:
        import signal

        from runs.ops.process_tools import kill_process_group

        if self.process.poll() is None:
            kill_process_group(self.process, first_signal or signal.SIGTERM, grace_seconds=15)
        self.log.close()


def start_celery_worker(
    queues: str = "train,research,default", name: str = "test", env: dict[str, str] | None = None
) -> ServiceProcess:
    """A real Celery worker on the test database; ready when it answers a ping through its broker.

    `env` (default: child_env()) may point it at another broker; the ping then goes through that
    broker with a separate app, so tasks this process sends keep using the configured one.
    """
    from celery import Celery

    from bilevel_site.celery import app

    env = env if env is not None else child_env()
    hostname = f"{name}-{time.monotonic_ns()}@localhost"
    worker = ServiceProcess(
        f"celery-{name}",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bilevel_site",
            "worker",
            "-Q",
            queues,
            "-c",
            "1",
            "-n",
            hostname,
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ],
        env,
    )
    pinger = (
        app
        if env.get("REDIS_URL") == os.environ.get("REDIS_URL")
        else Celery(broker=env["REDIS_URL"], set_as_current=False)
    )
    try:
        for _ in range(120):
            if worker.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{worker.output()}")
            if pinger.control.ping(destination=[hostname], timeout=0.5):
                worker.hostname = hostname  # type: ignore[attr-defined]
                return worker
    finally:
        if pinger is not app:
            pinger.close()
    worker.stop()
    raise RuntimeError(f"celery worker did not become ready:\n{worker.output()}")


@pytest.fixture
def celery_worker(transactional_db: None, redis_client: Any) -> Iterator[ServiceProcess]:
    worker = start_celery_worker()
    yield worker
    worker.stop()


@dataclass
class LiveServer:
    url: str
    host: str
    port: int
    process: ServiceProcess


@pytest.fixture
def asgi_server(transactional_db: None, redis_client: Any) -> Iterator[LiveServer]:
    """The real ASGI application (HTTP + WebSocket) served by daphne in a subprocess."""
    import socket

    from runs.ops.process_tools import wait_for_port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ServiceProcess(
        "daphne",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "bilevel_site.asgi:application"],
        child_env(),
    )
    if not wait_for_port("127.0.0.1", port, timeout=60, alive=lambda: server.process.poll() is None):
        server.stop()
        raise RuntimeError(f"daphne did not start:\n{server.output()}")
    yield LiveServer(url=f"http://127.0.0.1:{port}", host="127.0.0.1", port=port, process=server)
    server.stop()


def session_cookie_for(user: Any) -> str:
    """A real session (stored in the test database) for `user`, as the server will read it."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    from django.conf import settings

    return client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Debian chromium is missing in CI: bootstrap.py test should have installed it")
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def log_in(page: Any, server: LiveServer, username: str) -> None:
    page.goto(f"{server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")


# -- processes -------------------------------------------------------------------------


def process_is_gone(pid: int) -> bool:
    """True if pid no longer runs (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def processes_matching(*needles: str) -> list[int]:
    """pids whose command line contains every needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(needle in cmdline for needle in needles) and not process_is_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def trainers_of(run_id: int) -> list[int]:
    """pids of trainer processes working for this run (by its work directory: other runs, even of
    other checkouts with the same run id, do not count). A cold trainer names the directory on its
    command line; a warm one, forked from `python -m trainer.warm`, runs in it."""
    from django.conf import settings

    workdir = f"{settings.TRAINER_WORKDIR}/run-{run_id}/"
    found = []
    for pid in processes_matching("-m trainer"):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd") + "/"
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended while we looked
        if workdir in cmdline or cwd.startswith(workdir):
            found.append(pid)
    return found
