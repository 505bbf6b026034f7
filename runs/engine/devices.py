"""Which device a worker has, which queue a run's steps go to, and which workers are alive.

A worker states its device when it starts (a WorkerHeartbeat row, renewed on the database's clock).
Steps of a run that trains the `gpu` preset for real go to the `train-gpu` queue, which only a worker
on a machine with a CUDA GPU consumes: such a worker adds it to its `-Q train` by itself, so every
machine is started with the same command. Everything else goes to `train` (the surrogate does not
train, so it needs no GPU). A run that no live worker can take says so on its page.

The CUDA probe runs in a subprocess: initialising CUDA in a Celery parent would break CUDA in the
pool processes it forks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAIN_QUEUE = "train"
GPU_TRAIN_QUEUE = "train-gpu"
TRAIN_QUEUES = (TRAIN_QUEUE, GPU_TRAIN_QUEUE)
GPU_PRESETS = ("gpu",)
CUDA_PROBE = (
    "import json, torch\n"
    "if torch.cuda.is_available():\n"
    "    p = torch.cuda.get_device_properties(0)\n"
    "    print(json.dumps({'name': p.name, 'memory': p.total_memory, 'count': torch.cuda.device_count()}))\n"
    "else:\n"
    "    print('null')\n"
)


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda" (runs.models.DeviceKind)
    name: str
    memory_bytes: int | None

    @property
    def label(self) -> str:
        memory = f", {self.memory_bytes / 2**30:.0f} GiB" if self.memory_bytes else ""
        return f"{self.kind}: {self.name}{memory}"


def _cpu() -> Device:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return Device("cpu", f"{model or 'CPU'} ({os.cpu_count() or 1} cores)", memory)


@functools.cache
def this_device() -> Device:
    """This machine's training device: the first CUDA GPU if there is one, else the CPU."""
    if not list(Path("/dev").glob("nvidia[0-9]*")):
        return _cpu()
    try:
        probe = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True, timeout=180)
        found: dict[str, Any] | None = json.loads(probe.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        logger.warning("NVIDIA device nodes exist but the CUDA probe failed; this worker trains on the CPU")
        found = None
    if not found:
        return _cpu()
    return Device("cuda", str(found["name"]), int(found["memory"]))


def needs_gpu(preset: str, objective: str) -> bool:
    from ..models import Objective

    return preset in GPU_PRESETS and objective == Objective.TRAINER


def queue_for(preset: str, objective: str) -> str:
    return GPU_TRAIN_QUEUE if needs_gpu(preset, objective) else TRAIN_QUEUE


def adjust_train_queues(consumed: list[str]) -> list[str]:
    """The queues a worker asked for, corrected for its device: a GPU machine that trains also takes
    `train-gpu`; a machine without one must not (it would take `gpu` runs it cannot train)."""
    has_gpu = this_device().kind == "cuda"
    if GPU_TRAIN_QUEUE in consumed and not has_gpu:
        raise SystemExit(f"this machine has no CUDA GPU, so it cannot consume the {GPU_TRAIN_QUEUE} queue "
                         f"(runs of the gpu preset): start it with -Q {TRAIN_QUEUE}")
    if TRAIN_QUEUE in consumed and has_gpu and GPU_TRAIN_QUEUE not in consumed:
        return [*consumed, GPU_TRAIN_QUEUE]
    return consumed


# -- which workers are alive ------------------------------------------------------------------------


def announce_worker(name: str, queues: list[str]) -> None:
    """Record this worker (machine, device, queues) and keep its last_seen fresh while it runs."""
    from django.conf import settings
    from django.db import connection
    from django.db.models.functions import Now

    from ..models import WorkerHeartbeat

    device = this_device()
    WorkerHeartbeat.objects.update_or_create(hostname=name[:200], defaults={
        "host": socket.gethostname()[:255], "device_kind": device.kind, "device_name": device.name[:200],
        "device_memory_bytes": device.memory_bytes, "queues": sorted(queues), "started_at": Now(), "last_seen": Now(),
    })

    def beat() -> None:
        stopped = threading.Event()
        while not stopped.wait(settings.WORKER_BEAT_SECONDS):
            try:
                WorkerHeartbeat.objects.filter(hostname=name[:200]).update(last_seen=Now())
            except Exception:  # the database is away: the next beat tries again
                logger.warning("could not renew this worker's heartbeat", exc_info=True)
                connection.close()

    threading.Thread(target=beat, daemon=True, name="worker-heartbeat").start()


def live_workers(queue: str) -> list[Any]:
    from django.conf import settings
    from django.db.models.functions import Now

    from ..models import WorkerHeartbeat

    recent = WorkerHeartbeat.objects.filter(last_seen__gte=Now() - timedelta(seconds=settings.WORKER_SEEN_SECONDS))
    return [worker for worker in recent if queue in worker.queues]


def why_no_worker_can_take(run: Any) -> str | None:
    """For a run waiting for a worker: why none will take it (no live worker on its queue), or None."""
    from ..models import ACTIVE_RUN_STATUSES

    if run.status not in ACTIVE_RUN_STATUSES or run.lease_owner:
        return None
    experiment = run.experiment
    queue = queue_for(experiment.preset, experiment.objective)
    if live_workers(queue):
        return None
    if queue == GPU_TRAIN_QUEUE:
        return ("No worker with a CUDA GPU is connected, and this run trains the gpu preset, which only such a "
                "worker takes. It waits until one joins: on a GPU machine run `python3 bootstrap.py worker` "
                "with the site's DATABASE_URL, REDIS_URL and SECRET_KEY.")
    return ("No training worker is connected, so this run waits until one starts: `python3 bootstrap.py up` "
            "starts one here, `python3 bootstrap.py worker` on another machine.")
