"""Shared argument handling of the start/pause/resume/cancel commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from runs.engine.control import TransitionError
from runs.models import Run


class RunActionCommand(BaseCommand):
    action_name = ""

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_ids", nargs="*", type=int, help="run ids")
        parser.add_argument("--experiment", type=int, help="every run of this experiment")

    def act(self, run: Run) -> None:
        raise NotImplementedError

    def handle(self, *args: Any, **options: Any) -> None:
        runs = list(Run.objects.filter(pk__in=options["run_ids"]))
        if options["experiment"]:
            runs += list(Run.objects.filter(experiment_id=options["experiment"]))
        missing = set(options["run_ids"]) - {r.pk for r in runs}
        if missing or not runs:
            raise CommandError(f"no such run: {sorted(missing)}" if missing else "name run ids or --experiment")
        failures = 0
        for run in runs:
            try:
                self.act(run)
            except TransitionError as error:
                failures += 1
                self.stderr.write(str(error))
            else:
                self.stdout.write(f"run {run.pk}: {self.action_name}")
        if failures:
            raise CommandError(f"{failures} run(s) could not be {self.action_name}")


def command_for(action: Callable[[Run], None], name: str, help_text: str) -> type[RunActionCommand]:
    class Command(RunActionCommand):
        help = help_text
        action_name = name

        def act(self, run: Run) -> None:
            action(run)

    return Command
