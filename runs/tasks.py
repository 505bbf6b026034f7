"""Celery tasks of the search engine."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from .models import WorkerHeartbeat


@shared_task(name="runs.tasks.record_worker_heartbeat")
def record_worker_heartbeat(hostname: str, queues: list[str]) -> int:
    """Record that a worker is alive; the dashboard lists workers seen recently."""
    beat, _ = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"queues": queues, "last_seen": timezone.now()}
    )
    return beat.pk
