"""Shared test base: users of different permissions and real services started per test.

Services are real: the database the suite runs on (PostgreSQL in CI), Redis (REDIS_URL, set
by `bootstrap.py test`), Celery workers and the ASGI server started as subprocesses against
the test database, and Debian Chromium driven by Playwright.
"""

from __future__ import annotations

import contextlib
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


# -- nothing outlives its test module ----------------------------------------------------------
# A worker, server or trainer that a module started and did not stop (a fixture that never got to its
# teardown, a test killed by its timeout) would otherwise go on using the test database and the
# broker under the next modules' tests, which then fail for no reason of their own. At the end of
# every module, anything it left is reported as an error of that module, then killed, so the
# modules after it start clean.

LEFTOVER_GRACE_SECONDS = 10.0
# This process's warm trainer zygote (trainer/warm.py) lives as long as this process, by design.
LONG_LIVED_CHILDREN = ("-m trainer.warm",)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants_of(pid: int) -> set[int]:
    """Every living process below `pid` (by walking /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {p for p in found if not process_is_gone(p)}


def _long_lived(pid: int) -> bool:
    """A long-lived child by design, or a descendant of one (the zygote's forked trainings)."""
    return any(needle in _cmdline(pid) for needle in LONG_LIVED_CHILDREN) or any(
        needle in _cmdline(parent) for parent in _ancestors(pid) for needle in LONG_LIVED_CHILDREN)


def _ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        found.append(pid)
    return found


def _own_tcp_ports() -> set[int]:
    """Local TCP ports of this process's sockets: a database session on one of them is this process's own."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _foreign_sessions(database: str) -> list[tuple[int, str, str]]:
    """Sessions on the test database that are not this process's: (backend pid, application, last query)."""
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    with psycopg.connect(dbname="postgres", user=settings.get("USER") or "postgres",
                         password=settings.get("PASSWORD") or None, host=settings.get("HOST") or "127.0.0.1",
                         port=settings.get("PORT") or 5432, autocommit=True, connect_timeout=10) as admin:
        rows = admin.execute(
            "SELECT pid, client_port, application_name, left(query, 200) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
        own = _own_tcp_ports()
        # client_port is -1 (or NULL) for a Unix socket: whose it is cannot be told, so it is not blamed.
        return [(pid, app, query) for pid, port, app, query in rows if port is not None and port > 0
                and port not in own]


def _terminate_sessions(pids: list[int]) -> None:
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    with psycopg.connect(dbname="postgres", user=settings.get("USER") or "postgres",
                         password=settings.get("PASSWORD") or None, host=settings.get("HOST") or "127.0.0.1",
                         port=settings.get("PORT") or 5432, autocommit=True, connect_timeout=10) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _test_database() -> str | None:
    """The PostgreSQL test database this run uses, once pytest-django has created it."""
    from django.db import connection

    name = str(connection.settings_dict.get("NAME") or "")
    if connection.vendor != "postgresql" or not name.startswith("test_"):
        return None
    return name


def clean_up_after(before: set[int], grace: float = LEFTOVER_GRACE_SECONDS) -> list[str]:
    """What was started since `before` (this process's children then) and is still running, or still connected
    to the test database, after `grace` seconds: each is killed (or its session terminated) and named."""
    import signal

    from tests.polling import wait_until

    def leftovers() -> dict[int, str]:
        return {pid: _cmdline(pid) for pid in descendants_of(os.getpid()) - before if not _long_lived(pid)}

    def sessions() -> list[tuple[int, str, str]]:
        database = _test_database()
        return _foreign_sessions(database) if database else []

    # What is being stopped right now (a process group after SIGTERM) gets a moment to finish.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not leftovers() and not sessions(), grace, "what this module started to end",
                   interval=0.2)
        return []
    processes, connected = leftovers(), sessions()
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            group = os.getpgid(pid)
            if group != os.getpgid(0):  # its own session (ServiceProcess): the whole group goes
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    if connected:
        _terminate_sessions([pid for pid, _, _ in connected])
    report = [f"process {pid} still running: {command[:200]}" for pid, command in processes.items()]
    report += [f"database session {pid} ({app or 'no application name'}) still connected, last query: {query!r}"
               for pid, app, query in connected]
    return report


@pytest.fixture(scope="module", autouse=True)
def nothing_outlives_the_module() -> Iterator[None]:
    before = descendants_of(os.getpid())
    yield
    report = clean_up_after(before)
    if report:
        pytest.fail("this module left behind (now killed, so later modules start clean):\n" + "\n".join(report))
