"""The launcher heals itself while a real training runs (cpu-tiny, the real trainer).

`manage.py launch` runs with its own data directory (so its embedded Redis, logs and status file
are private) on the test database. During one run, three parts are SIGKILLed, each while a
trainer is working: the train worker's pool child (Celery's main process replaces it and
redelivers the task), the train worker's main process, and the embedded Redis (the launcher
restarts each). A thread requests a page all along. The run must complete with contiguous
iterations, the killed steps must be taken over long before their lease would have expired,
and the launcher's messages must name each dead part, its signal and its own last log lines.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from runs.models import InterruptedAttempt, Run, RunStatus
from tests.conftest import ServiceProcess
from tests.engine.helpers import make_experiment
from tests.polling import wait_until

from .conftest import free_port, manage, processes_matching, seed_baseline

# Real trainings (two whole, two cut short) and three recoveries: minutes on a loaded machine.
pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(480), pytest.mark.django_db(transaction=True)]

LEASE_SECONDS = 60


class PagePoller(threading.Thread):
    """Requests the login page (it renders base.html, with the recovery banner) every 0.2 s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopped = threading.Event()
        self.failures: list[str] = []
        self.answers = 0
        self.saw_recovering = False

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    body = response.read().decode()
                self.answers += 1
                self.saw_recovering |= "The back end is recovering" in body
            except (urllib.error.URLError, OSError) as error:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {error}")


def started_pid(output: str, part: str) -> int:
    """The pid of the latest instance of a part, from the launcher's "started <part> (pid N" lines."""
    return int(re.findall(rf"started {part} \(pid (\d+)", output)[-1])


def test_killed_workers_and_redis_are_restarted_and_the_run_completes() -> None:
    experiment = make_experiment(
        name="self-healing", objective="trainer", iterations=2, strategy_interval=10,
        budget_value=1e11, threads=1, review_gate=False,
    )
    run = experiment.runs.get()
    seed_baseline(run)  # the kills land on proposals; the last one runs through the restarted Redis
    data_dir = Path(tempfile.mkdtemp(prefix="launcher-"))
    env = manage_env(data_dir)
    port = free_port()
    launcher = ServiceProcess("launcher", [sys.executable, "manage.py", "launch", "--port", str(port)], env)
    poller = PagePoller(f"http://127.0.0.1:{port}/accounts/login/")
    trainings = f"{data_dir}/trainings/run-{run.pk}/"

    seen: set[int] = set()  # trainers already under a kill: the next kill waits for a new one

    def trainer() -> int:
        found = [pid for pid in processes_matching("-m trainer") if pid not in seen and works_in(pid, trainings)]
        return found[0] if found else 0  # 0: none yet (no process has pid 0)

    def steps_claimed() -> int:
        return Run.objects.get(pk=run.pk).steps_claimed

    def kill_during_training(pid_of_victim: Any, what: str) -> float:
        """SIGKILL a part while a trainer works; return seconds until the step was claimed again."""
        training = wait_until(trainer, 90, f"a trainer to kill {what} under")
        seen.add(training)
        claims = steps_claimed()
        victim = pid_of_victim(training)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: steps_claimed() > claims, LEASE_SECONDS, f"the step to be taken over after killing {what}")
        return time.monotonic() - killed

    began = time.monotonic()
    try:
        wait_until(lambda: "bilevel is up" in launcher.output(), 120, "the launcher to start")
        wait_until(lambda: ready_workers(data_dir) == 2, 90, "both workers to be ready")
        up = time.monotonic() - began
        poller.start()
        started = manage(env, "start_run", str(run.pk))
        assert started.returncode == 0, started.stderr

        pool_child = kill_during_training(celery_ancestor, "the pool child")
        main = kill_during_training(lambda _: started_pid(launcher.output(), "worker-train"), "the worker")
        # The step in flight survives a Redis restart (its lease lives in the database): it goes on.
        wait_until(trainer, 90, "a trainer to kill redis under")
        redis_pid = started_pid(launcher.output(), "redis")
        os.kill(redis_pid, signal.SIGKILL)
        wait_until(lambda: "redis is back" in launcher.output(), 30, "the launcher to restart redis")
        wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 180, "the run to finish")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{diagnostics(launcher, data_dir)}") from failure
    finally:
        poller.stopped.set()
        launcher.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    output = launcher.output()
    print(f"\nlauncher up in {up:.0f} s; step taken over {pool_child:.1f} s after killing the pool child, "
          f"{main:.1f} s after killing the worker's main process (lease: {LEASE_SECONDS} s); "
          f"run finished {time.monotonic() - began:.0f} s after launch; the page answered {poller.answers} times")

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_detail
    assert list(run.iteration_set.values_list("index", flat=True)) == [0, 1, 2], "none lost or recorded twice"
    # Both worker deaths were noticed by pid, not by the lease running out.
    assert pool_child < LEASE_SECONDS / 2 and main < LEASE_SECONDS / 2
    attempts = list(InterruptedAttempt.objects.filter(run=run))
    assert len(attempts) >= 2 and all("no longer running" in a.reason for a in attempts[:2]), attempts

    assert poller.failures == [], poller.failures
    assert poller.saw_recovering, "the pages never said that the back end was recovering"
    for part in ("worker-train", "redis"):
        assert re.search(rf"{part} \(pid \d+\) was killed by SIGKILL \(signal 9\)", output), output
    # The crash message quotes the dead Redis's own log (its lines carry its pid), not another's.
    redis_message = output[output.index("redis (pid"):]
    assert f"{redis_pid}:M" in redis_message.split("redis is back")[0]
    assert "worker-train is back" in output and "redis is back" in output and "giving up" not in output


def manage_env(data_dir: Path) -> dict[str, str]:
    from .conftest import env_with

    env = env_with(BILEVEL_DATA_DIR=str(data_dir))
    env.pop("REDIS_URL", None)  # the launcher starts (and restarts) its own embedded Redis
    return env


def diagnostics(launcher: ServiceProcess, data_dir: Path) -> str:
    logs = sorted((data_dir / "logs").glob("*.log"))
    tails = [f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]) for log in logs]
    return "--- launcher\n" + launcher.output() + "\n" + "\n".join(tails)


def ready_workers(data_dir: Path) -> int:
    logs = [data_dir / "logs" / f"{name}.log" for name in ("worker-train", "worker-research")]
    return sum(1 for log in logs if log.exists() and " ready." in log.read_text(errors="replace"))


def works_in(pid: int, directory: str) -> bool:
    """A cold trainer names its work directory on its command line; a warm one (forked from the
    worker's `python -m trainer.warm`) runs in it."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd") + "/"
    except OSError:
        return False
    return directory in cmdline or cwd.startswith(directory)


def celery_ancestor(pid: int) -> int:
    """The Celery process a trainer works for (its pool child), whether forked cold or from the warm zygote."""
    current = parent_of(pid)
    while b"celery" not in Path(f"/proc/{current}/cmdline").read_bytes():
        current = parent_of(current)
    return current


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
