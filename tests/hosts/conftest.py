"""A site of two hosts for the multi-host tests: this machine (the site: beat, a default-queue worker
and a train worker) and a second host in a network namespace (tests/hosts/netns.py) that joins with
`python3 bootstrap.py worker` over a private link.

Leases, heartbeats, the reaper and the database/Redis timeouts are shortened by settings (the same
code paths, seconds instead of minutes), and the surrogate objective is paced so a step stays in
flight long enough to be cut off.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcess, child_env, start_celery_worker
from tests.polling import wait_until

from .netns import SecondHost, why_no_second_host

LEASE_SECONDS = 6
HEARTBEAT_SECONDS = 0.5  # five missed beats (2.5 s) and a holder on another host is taken over
FAST_SETTINGS = {
    "BILEVEL_LEASE_SECONDS": str(LEASE_SECONDS),
    "BILEVEL_LEASE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    "BILEVEL_REAPER_SECONDS": "1",
    "BILEVEL_DB_TIMEOUT_SECONDS": "2",
    "BILEVEL_REDIS_TIMEOUT_SECONDS": "2",
    "BILEVEL_LOST_TASK_GRACE_SECONDS": "2",
    "BILEVEL_WORKER_BEAT_SECONDS": "1",
    "BILEVEL_WORKER_SEEN_SECONDS": "10",
}
MEASUREMENTS = "multihost-measurements.jsonl"


@dataclass
class Site:
    env: dict[str, str]
    second: SecondHost
    beat_dir: str
    services: list[ServiceProcess] = field(default_factory=list)

    @property
    def first_hostname(self) -> str:
        return socket.gethostname()

    def wait(self, condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
        """wait_until, with every process's log in the failure message (read when it fails)."""
        try:
            return wait_until(condition, timeout, what, interval=interval)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    def logs(self) -> str:
        parts = [f"--- {s.name} ---\n{s.output()[-4000:]}" for s in self.services]
        parts.append(f"--- second host {self.second.hostname} (command) ---\n{self.second.output()[-4000:]}")
        parts.append(f"--- second host worker ---\n{self.second.worker_log()[-6000:]}")
        return "\n".join(parts)


def _service_address(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def record_measurement(case: str, **values: Any) -> None:
    """Numbers for the README's multi-host section, one JSON line per case run."""
    from django.conf import settings

    line = json.dumps({"case": case, **values})
    print(f"\nmeasured: {line}")
    with open(Path(settings.DATA_DIR) / MEASUREMENTS, "a") as out:
        out.write(line + "\n")


@pytest.fixture
def make_site(transactional_db: None, redis_client: Any) -> Iterator[Callable[..., Site]]:
    """Start the two-host site: make_site(pace_seconds=..., second_clock_offset=...)."""
    reason = why_no_second_host()
    if reason:
        pytest.skip(reason)
    sites: list[Site] = []

    def make(pace_seconds: float = 1.0, second_clock_offset: float = 0.0) -> Site:
        from django.conf import settings

        env = child_env() | FAST_SETTINGS | {"BILEVEL_SURROGATE_PACE_SECONDS": str(pace_seconds),
                                             "SECRET_KEY": settings.SECRET_KEY}
        database = _service_address(env["DATABASE_URL"], 5432)
        redis = _service_address(env["REDIS_URL"], 6379)
        second = SecondHost(env, database=database, redis=redis, clock_offset_seconds=second_clock_offset)
        site = Site(env=env, second=second, beat_dir=tempfile.mkdtemp(prefix="beat-"))
        sites.append(site)
        site.services.append(ServiceProcess("beat", [sys.executable, "-m", "celery", "-A", "bilevel_site", "beat",
                                                     "-s", f"{site.beat_dir}/schedule", "-l", "INFO"], env))
        site.services.append(start_celery_worker(queues="research,default", name="site", env=env))
        site.services.append(start_celery_worker(queues="train", name=f"train-{site.first_hostname}", env=env))
        second.start_worker()
        return site

    yield make
    for site in sites:
        for service in reversed(site.services):
            service.stop()
        try:
            if site.second.process is not None and site.second.process.poll() is None:
                # Ctrl-C on the second host's command: it stops its worker and exits cleanly.
                code = site.second.interrupt()
                assert code == 0, f"bootstrap.py worker exited with {code} on Ctrl-C:\n{site.second.output()}"
        finally:
            site.second.close()
            shutil.rmtree(site.beat_dir, ignore_errors=True)
