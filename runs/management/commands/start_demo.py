"""Create and start the demo experiment (cpu-tiny, a short budget), once.

Its agent is the default one: the built-in heuristic, or the LLM where the launcher made an LLM the
default (`up --local-llm` sets BILEVEL_DEFAULT_AGENT=llm and LLM_BASE_URL to the server it started).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from runs.engine.confirmation import default_repeats
from runs.engine.control import create_runs, start_experiment
from runs.models import AgentBackend, Experiment, Objective
from trainer.schema import PRESET_SETTINGS

DEMO_NAME = "Demo: built-in agent on cpu-tiny (Levels 1 + 1.5 + 2)"
LLM_DEMO_NAME = "Demo: LLM agent {model} on cpu-tiny (Levels 1 + 1.5 + 2)"
DESCRIPTION = ("Started by the launcher so there is something to watch. Group C: the agent proposes, Level 1.5 "
               "freezes stalled parameters every 4 proposals, Level 2 drafts a mechanism that waits for your "
               "review in the Review queue.")


def demo_agent() -> tuple[str, str, str]:
    """(backend, experiment name, why not the LLM: empty when it is the LLM)."""
    if settings.DEFAULT_AGENT_BACKEND != AgentBackend.LLM:
        return AgentBackend.BUILTIN, DEMO_NAME, ""
    if not (settings.LLM_BASE_URL and settings.LLM_MODEL):
        return AgentBackend.BUILTIN, DEMO_NAME, (
            "the LLM is the default agent but LLM_BASE_URL or LLM_MODEL is not set: the demo uses the built-in agent")
    return AgentBackend.LLM, LLM_DEMO_NAME.format(model=settings.LLM_MODEL), ""


class Command(BaseCommand):
    help = "Create and start a demo experiment unless one exists (with the default agent: built-in or the LLM)."

    def handle(self, *args: Any, **options: Any) -> None:
        backend, name, why_not_llm = demo_agent()
        if why_not_llm:
            self.stderr.write(self.style.WARNING(why_not_llm))
        existing = Experiment.objects.filter(name=name).first()
        if existing is not None:
            self.stdout.write(f"demo experiment exists: /experiments/{existing.pk}/")
            return
        description = DESCRIPTION
        if backend == AgentBackend.LLM:
            # No URL stored: the experiment follows the default LLM, so a restarted launcher's new port works.
            description += (" The agent is the LLM the launcher serves; on a CPU a proposal takes about a minute "
                            "and a Level 2 session ten or more.")
        with transaction.atomic():
            experiment = Experiment.objects.create(
                name=name, description=description, agent_backend=backend,
                groups=["C"], repeats=1, iterations=12, strategy_interval=4, research_interval=1,
                preset="cpu-tiny", budget_kind="flops",
                budget_value=PRESET_SETTINGS["cpu-tiny"].default_flops_budget,
                review_gate=True,
                confirmation_repeats=default_repeats(Objective.TRAINER),
            )
            create_runs(experiment)
            start_experiment(experiment)
        agent = f"the LLM {settings.LLM_MODEL}" if backend == AgentBackend.LLM else "the built-in agent"
        self.stdout.write(self.style.SUCCESS(f"demo experiment started with {agent}: /experiments/{experiment.pk}/"))
