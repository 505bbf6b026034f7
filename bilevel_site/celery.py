"""The Celery app, configured from Django settings (CELERY_* names)."""

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bilevel_site.settings")

app = Celery("bilevel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

TRAIN_QUEUE = "train"


@worker_process_init.connect
def start_warm_trainer(**_: Any) -> None:
    """A pool process that will train starts its warm trainer now (in the background), not on its
    first training: importing torch there would add seconds to that iteration."""
    from trainer.launch import prestart_warm_trainer

    if TRAIN_QUEUE in app.amqp.queues.consume_from:  # the -Q selection, or every queue without one
        prestart_warm_trainer()
