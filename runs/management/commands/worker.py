"""One supervised training worker that joins an existing site (what `bootstrap.py worker` runs).

    DATABASE_URL=postgres://... REDIS_URL=redis://... SECRET_KEY=... python manage.py worker

It needs the site's PostgreSQL and Redis (a worker on another machine cannot share the site's
SQLite file or embedded Redis) and checks both answer before it starts. Started as root it first
becomes an unprivileged account, like `launch` (runs/ops/privileges.py). It then runs one Celery worker
on the `train` queue (`-c 1`: one training at a time on this machine; a machine with a CUDA GPU
also takes `train-gpu`, see runs/engine/devices.py), restarts it with backoff if it dies
(runs/ops/supervisor.py), and stops it on Ctrl-C or SIGTERM. The worker states what device it has when
it starts (runs.models.WorkerHeartbeat), so the site routes `gpu` runs only to machines with a GPU.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from runs.ops.privileges import PrivilegeError, drop_root
from runs.ops.process_tools import kill_process_group
from runs.ops.supervisor import Child, GiveUp, Supervisor

from .launch import CELERY_READY_MARKER, QUICK_START, SUPERVISION_POLL_SECONDS

JOIN_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")


def why_cannot_join(environ: dict[str, str]) -> str | None:
    """None if the three variables name a shared site; else what is missing."""
    missing = [name for name in JOIN_VARIABLES if not environ.get(name)]
    if missing:
        return (f"{', '.join(missing)} not set: a worker joins an existing site, so give it the site's "
                f"{', '.join(JOIN_VARIABLES)} (see the README, 'More workers on other machines')")
    if environ["DATABASE_URL"].startswith("sqlite"):
        return "DATABASE_URL is a SQLite file, which another machine cannot share: use the site's PostgreSQL"
    return None


def services_answer() -> str | None:
    """None if the site's database (migrated) and Redis answer; else which does not, and why."""
    import redis

    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM django_migrations LIMIT 1")
    except Exception as error:
        return f"the site's database does not answer or is not set up ({type(error).__name__}: {error})".strip()
    finally:
        connection.close()
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=10)
        client.ping()
        client.close()
    except redis.RedisError as error:
        return f"the site's Redis does not answer ({error})"
    return None


class Command(BaseCommand):
    help = "Run one supervised training worker that joins the site in DATABASE_URL / REDIS_URL."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", default="", help="the worker's name (default: train-<hostname>)")

    def handle(self, *args: Any, **options: Any) -> None:
        import os

        problem = why_cannot_join(dict(os.environ)) or services_answer()
        if problem:
            raise CommandError(f"not starting the worker: {problem}")
        try:
            drop_root(Path(settings.DATA_DIR), Path(settings.BASE_DIR), say=self.stdout.write)
        except PrivilegeError as reason:
            raise CommandError(f"not starting as root: {reason}") from None
        log_dir = Path(settings.DATA_DIR) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        supervisor = Supervisor(
            env, log_dir, Path(settings.BASE_DIR), Path(settings.BACKEND_STATUS_FILE),
            say=self.stdout.write, warn=lambda text: self.stderr.write(self.style.ERROR(text)),
        )
        name = options["name"] or f"train-{socket.gethostname()}"
        celery = str(Path(sys.executable).parent / "celery")
        # Cold shutdown on stop (SIGQUIT), as the launcher does: the step in flight is taken over by
        # another machine once this one's heartbeat stops, instead of holding Ctrl-C for a whole training.
        supervisor.start(Child("worker-train", [celery, "-A", "bilevel_site", "worker", "-Q", "train", "-c", "1",
                                                "-n", f"{name}@%h", "-l", "INFO", *QUICK_START],
                               stop_signal=signal.SIGQUIT, ready_marker=CELERY_READY_MARKER))
        stopping: list[int] = []
        signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
        self.stdout.write(f"worker {name} joining the site (logs: {log_dir}/worker-train.log); Ctrl-C stops it.")
        exit_code = 0
        try:
            while not stopping:
                supervisor.tick()
                time.sleep(SUPERVISION_POLL_SECONDS)  # supervision poll interval, not synchronisation
        except GiveUp as reason:
            self.stderr.write(self.style.ERROR(f"giving up: {reason}"))
            exit_code = 1
        finally:
            supervisor.stop_all(lambda process, sig: kill_process_group(process, sig, grace_seconds=10))
        if stopping:
            self.stdout.write(f"received {signal.Signals(stopping[0]).name}: the worker stopped.")
        if exit_code:
            sys.exit(exit_code)
