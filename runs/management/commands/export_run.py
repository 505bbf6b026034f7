"""Export one run's iterations as CSV or JSON (the same code as the dashboard's download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.analysis.iteration_table import EXPORT_FORMATS, export_chunks, filtered_iterations, iterate_rows
from runs.models import Run


class Command(BaseCommand):
    help = "Write a run's iterations (all of them, in index order) as CSV or JSON to a file or stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", type=int)
        parser.add_argument("--format", choices=EXPORT_FORMATS, default="csv")
        parser.add_argument("--output", help="file to write (default: standard output)")

    def handle(self, *args: Any, **options: Any) -> None:
        run = Run.objects.filter(pk=options["run_id"]).first()
        if run is None:
            raise CommandError(f"no run with id {options['run_id']}")
        chunks = export_chunks(iterate_rows(filtered_iterations(run.iteration_set.all(), {})), options["format"])
        if options["output"]:
            path = Path(options["output"])
            # newline="" keeps the csv module's \r\n row endings as they are.
            with path.open("w", encoding="utf-8", newline="") as handle:
                handle.writelines(chunks)
            self.stderr.write(f"wrote run {run.pk} to {path}")
        else:
            for chunk in chunks:
                self.stdout.write(chunk, ending="")
