"""Re-queue steps whose worker died or whose queued task was lost (what the periodic reaper does).

    python manage.py reap_steps [--broker-restarted]

The launcher runs it with --broker-restarted when the embedded Redis came back without its data.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from runs.tasks import reap_expired_leases


class Command(BaseCommand):
    help = "Re-queue steps whose worker died, or (--broker-restarted) every step not held by a worker."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--broker-restarted", action="store_true", help="Redis lost its data: every queued step task is gone"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        revived = reap_expired_leases(broker_restarted=options["broker_restarted"])
        self.stdout.write(f"re-queued the steps of runs {revived}" if revived else "nothing to re-queue")
