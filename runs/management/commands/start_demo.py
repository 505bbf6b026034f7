"""Create and start the demo experiment (built-in agent, cpu-tiny, a short budget), once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from runs.confirmation import default_repeats
from runs.control import create_runs, start_experiment
from runs.models import Experiment, Objective
from trainer.schema import PRESET_SETTINGS

DEMO_NAME = "Demo: built-in agent on cpu-tiny (Levels 1 + 1.5 + 2)"


class Command(BaseCommand):
    help = "Create and start a demo experiment unless one exists."

    def handle(self, *args: Any, **options: Any) -> None:
        existing = Experiment.objects.filter(name=DEMO_NAME).first()
        if existing is not None:
            self.stdout.write(f"demo experiment exists: /experiments/{existing.pk}/")
            return
        with transaction.atomic():
            experiment = Experiment.objects.create(
                name=DEMO_NAME,
                description="Started by the launcher so there is something to watch. Group C: the agent proposes, "
                "Level 1.5 freezes stalled parameters every 4 proposals, Level 2 drafts a mechanism that waits "
                "for your review in the Review queue.",
                groups=["C"], repeats=1, iterations=12, strategy_interval=4, research_interval=1,
                preset="cpu-tiny", budget_kind="flops",
                budget_value=PRESET_SETTINGS["cpu-tiny"].default_flops_budget,
                review_gate=True,
                confirmation_repeats=default_repeats(Objective.TRAINER),
            )
            create_runs(experiment)
            start_experiment(experiment)
        self.stdout.write(self.style.SUCCESS(f"demo experiment started: /experiments/{experiment.pk}/"))
