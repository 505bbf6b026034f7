"""Import the paper's published per-repeat reports (JSON) as a read-only reference experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.analysis.paper_import import DEFAULT_EXPERIMENT_NAME, PaperImportError, import_reports


class Command(BaseCommand):
    help = "Import published paper runs (A1.json, C1.json, ...) into a reference experiment; all or nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", type=Path)
        parser.add_argument("--experiment-name", default=DEFAULT_EXPERIMENT_NAME)

    def handle(self, *args: Any, **options: Any) -> None:
        files = []
        for path in options["files"]:
            try:
                files.append((path.name, path.read_bytes()))
            except OSError as error:
                raise CommandError(f"cannot read {path}: {error.strerror}") from None
        try:
            experiment, runs = import_reports(files, options["experiment_name"])
        except PaperImportError as error:
            raise CommandError(f"nothing imported: {error}") from None
        for run in runs:
            baseline, best = run.baseline_val_bpb or 0.0, run.best_val_bpb or 0.0
            self.stdout.write(
                f"{run.group}{run.repeat}: baseline {baseline:.6f}, best {best:.6f} "
                f"(Δ {best - baseline:+.6f}), {run.proposals_done} proposals"
            )
        self.stdout.write(self.style.SUCCESS(f"imported {len(runs)} run(s) into experiment #{experiment.pk} "
                                             f"{experiment.name!r}"))
