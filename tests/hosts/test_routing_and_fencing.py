"""The parts of running on several hosts that need no second host: routing by device, the run page's
word when no worker can take a run, the fence, the database's clock, lost broker tasks, and the
`worker` command's refusals."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from runs.engine import control
from runs.engine import devices as devices_module
from runs.engine.devices import GPU_TRAIN_QUEUE, TRAIN_QUEUE, Device, adjust_train_queues
from runs.engine.lease import Fenced, claim_step, commit_as_holder, renew_lease
from runs.management.commands.worker import why_cannot_join
from runs.models import InterruptedAttempt, Iteration, Run, WorkerHeartbeat
from runs.tasks import reap_expired_leases, steps_in_broker
from tests.conftest import ROOT
from tests.engine.helpers import make_experiment

pytestmark = pytest.mark.django_db(transaction=True)

CPU = Device("cpu", "Test CPU (2 cores)", 8 * 2**30)
GPU = Device("cuda", "NVIDIA H100 80GB HBM3", 85 * 2**30)


def queued_steps(redis_client: Any, queue: str) -> set[tuple[int, int]]:
    from runs.tasks import _step_of

    return {step for step in map(_step_of, redis_client.lrange(queue, 0, -1)) if step}


@pytest.mark.parametrize(("preset", "objective", "queue"), [
    ("gpu", "trainer", GPU_TRAIN_QUEUE), ("cpu-tiny", "trainer", TRAIN_QUEUE), ("gpu", "surrogate", TRAIN_QUEUE)])
def test_a_step_is_queued_for_the_device_its_run_needs(redis_client: Any, preset: str, objective: str,
                                                      queue: str) -> None:
    run = make_experiment(preset=preset, objective=objective).runs.get()
    control.start_run(run)
    run.refresh_from_db()
    other = TRAIN_QUEUE if queue == GPU_TRAIN_QUEUE else GPU_TRAIN_QUEUE
    assert queued_steps(redis_client, queue) == {(run.pk, run.step_ticket)}
    assert queued_steps(redis_client, other) == set()


def test_a_gpu_machine_also_takes_gpu_runs_and_a_cpu_machine_refuses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices_module, "this_device", lambda: GPU)
    assert adjust_train_queues(["train"]) == ["train", GPU_TRAIN_QUEUE]
    assert adjust_train_queues(["research", "default"]) == ["research", "default"]  # it does not train
    monkeypatch.setattr(devices_module, "this_device", lambda: CPU)
    assert adjust_train_queues(["train"]) == ["train"]
    with pytest.raises(SystemExit, match="no CUDA GPU, so it cannot consume the train-gpu queue"):
        adjust_train_queues(["train", GPU_TRAIN_QUEUE])


def beat(name: str, queues: list[str], device: Device, seconds_ago: float = 0) -> None:
    WorkerHeartbeat.objects.create(hostname=name, host=name.split("@")[-1], queues=queues, device_kind=device.kind,
                                   device_name=device.name, last_seen=timezone.now() - timedelta(seconds=seconds_ago))


def test_the_run_page_says_when_no_worker_can_take_the_run(client: Any, users: Any) -> None:
    client.force_login(users.plain)
    cpu_run = make_experiment(name="cpu").runs.get()
    gpu_run = make_experiment(name="gpu", preset="gpu", objective="trainer").runs.get()

    def notice(run: Run) -> str:
        page = client.get(f"/runs/{run.pk}/").content.decode()
        return page.split('id="run-no-worker"')[1].split("</p>")[0] if 'id="run-no-worker"' in page else ""

    assert "No training worker is connected" in notice(cpu_run)
    assert "No worker with a CUDA GPU is connected" in notice(gpu_run)
    beat("train-old@a", ["train"], CPU, seconds_ago=3600)  # gone for an hour: does not count
    assert "No training worker is connected" in notice(cpu_run)
    beat("train@b", ["train"], CPU)
    assert notice(cpu_run) == ""
    assert "CUDA GPU" in notice(gpu_run), "a CPU worker does not take gpu runs"
    beat("train@c", ["train", GPU_TRAIN_QUEUE], GPU)
    assert notice(gpu_run) == ""


def test_the_iteration_table_and_exports_show_which_host_and_device_trained_each_iteration(
        client: Any, users: Any) -> None:
    from tests.engine.helpers import drive

    run = make_experiment(iterations=2).runs.get()
    drive(run)
    recorded = set(Iteration.objects.filter(run=run).values_list("host", "device"))
    assert len(recorded) == 1
    host, device = recorded.pop()
    assert host and device.startswith("cpu: ")
    client.force_login(users.plain)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    cell = f'<td class="trained-on small">{host}<div class="muted">{device}</div></td>'
    assert "<th>Trained on</th>" in page and page.count(cell) == 3  # the baseline and two proposals
    response = client.get(f"/runs/{run.pk}/iterations/?format=csv")
    header, *rows = csv.reader(b"".join(response.streaming_content).decode().splitlines())
    assert header[-2:] == ["host", "device"] and [row[-2:] for row in rows] == [[host, device]] * 3


def test_each_claim_raises_the_ticket_and_a_stale_holder_commits_nothing() -> None:
    run = make_experiment().runs.get()
    first = claim_step(run.pk, run.step_ticket, "a:1")
    assert first == 1
    Run.objects.filter(pk=run.pk).update(lease_heartbeat_at=timezone.now() - timedelta(minutes=5), lease_node="x")
    second = claim_step(run.pk, run.step_ticket, "b:2")  # a's heartbeat is stale: b takes over
    assert second == 2
    writes: list[str] = []
    with pytest.raises(Fenced, match=r"iteration 0 was refused: the lease \(ticket 1\)"):
        commit_as_holder(run.pk, "a:1", 1, lambda: writes.append("a"), "iteration 0",
                         lambda: {"index": 0, "val_bpb": 2.5})
    assert writes == [] and not renew_lease(run.pk, "a:1", 1)
    refused = InterruptedAttempt.objects.get(run=run, holder="a:1")
    assert refused.ticket == 1 and refused.fenced_at is not None and refused.fenced_result["val_bpb"] == 2.5
    commit_as_holder(run.pk, "b:2", 2, lambda: writes.append("b"), "iteration 0", dict)
    assert writes == ["b"]


def test_lease_times_come_from_the_database_clock_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    run = make_experiment().runs.get()
    monkeypatch.setattr(timezone, "now", lambda: datetime(2001, 1, 1, tzinfo=UTC))  # a host far off
    assert claim_step(run.pk, run.step_ticket, "skewed:1")
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        database_now = cursor.fetchone()[0]
    run.refresh_from_db()
    assert run.lease_heartbeat_at is not None and run.lease_expires_at is not None
    assert abs((run.lease_heartbeat_at - database_now).total_seconds()) < 60
    assert run.lease_expires_at > database_now


def test_a_step_task_lost_with_the_brokers_data_is_queued_again(redis_client: Any,
                                                               settings: Any) -> None:
    settings.LOST_TASK_GRACE_SECONDS = 0
    waiting, held = make_experiment(repeats=2).runs.all()
    control.start_run(waiting)
    control.start_run(held)
    waiting.refresh_from_db()
    held.refresh_from_db()
    assert claim_step(held.pk, held.step_ticket, "worker:1")
    assert {(waiting.pk, waiting.step_ticket)} <= (steps_in_broker() or set())
    assert reap_expired_leases() == [], "a queued task is not lost"
    redis_client.flushdb()
    assert reap_expired_leases() == [waiting.pk], "the held run's worker has its task: only the waiting one"
    waiting.refresh_from_db()
    assert queued_steps(redis_client, TRAIN_QUEUE) == {(waiting.pk, waiting.step_ticket)}


def test_the_worker_command_refuses_to_start_without_a_site_to_join() -> None:
    assert "DATABASE_URL, REDIS_URL, SECRET_KEY not set" in (why_cannot_join({}) or "")
    assert "SQLite file" in (why_cannot_join({"DATABASE_URL": "sqlite:///x", "REDIS_URL": "redis://h/0",
                                               "SECRET_KEY": "k" * 50}) or "")
    assert why_cannot_join({"DATABASE_URL": "postgres://h/db", "REDIS_URL": "redis://h/0", "SECRET_KEY": "k"}) is None
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    result = subprocess.run([sys.executable, "manage.py", "worker"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "not starting the worker: DATABASE_URL, REDIS_URL, SECRET_KEY not set" in result.stderr
