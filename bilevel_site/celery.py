"""The Celery app, configured from Django settings (CELERY_* names)."""

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, celeryd_after_setup, celeryd_init, worker_process_init

from .clock_skew import apply_test_clock_offset

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bilevel_site.settings")

apply_test_clock_offset()  # tests only: a no-op unless BILEVEL_TEST_CLOCK_OFFSET_SECONDS is set

app = Celery("bilevel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

TRAIN_QUEUE = "train"
# Only for a harness that itself runs as root and starts workers directly (the test suite, bench/).
ALLOW_ROOT_VARIABLE = "BILEVEL_ALLOW_ROOT_WORKER"
ROOT_REFUSAL = (
    "bilevel refuses to run a Celery {part} as root (as Celery's documentation recommends): a worker runs "
    "trainings and Level 2's sandboxes. Start it as an unprivileged account, e.g. `runuser -u bilevel -- "
    ".venv/bin/celery -A bilevel_site {part} ...`, or start everything with `python3 bootstrap.py up` / "
    "`manage.py launch`, which gives root up itself."
)


def refuse_root(part: str) -> None:
    if os.geteuid() == 0 and os.environ.get(ALLOW_ROOT_VARIABLE) != "1":
        # SystemExit passes through Celery's signal dispatch (it only catches Exception) and stops
        # the worker before it consumes anything.
        raise SystemExit(ROOT_REFUSAL.format(part=part))


@celeryd_init.connect
def refuse_root_worker(**_: Any) -> None:
    refuse_root("worker")


@celeryd_after_setup.connect
def consume_by_device(instance: Any = None, **_: Any) -> None:
    """A worker on a machine with a CUDA GPU that trains also takes the `train-gpu` queue (runs of the
    gpu preset); one without a GPU refuses that queue. So every machine starts with `-Q train`."""
    from runs.engine.devices import adjust_train_queues

    queues = app.amqp.queues
    wanted = adjust_train_queues(list(queues.consume_from))
    for name in wanted:
        if name not in queues.consume_from:
            queues.select_add(name)  # type: ignore[arg-type]  # Celery takes a name too (as -Q does)


@beat_init.connect
def refuse_root_beat(**_: Any) -> None:
    refuse_root("beat")


@worker_process_init.connect
def start_warm_trainer(**_: Any) -> None:
    """A pool process that will train starts its warm trainer now (in the background), not on its
    first training: importing torch there would add seconds to that iteration."""
    from trainer.launch import prestart_warm_trainer

    if TRAIN_QUEUE in app.amqp.queues.consume_from:  # the -Q selection, or every queue without one
        prestart_warm_trainer()
