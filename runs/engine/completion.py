"""A run whose steps have done all its work ends completed, and is offered its counterfactual replays.

The end itself is run_status.end_run's (the one place a run ends); this is what follows a completion
that a step reached (the last proposal recorded, or the last confirmation trained).
"""

from __future__ import annotations

from ..models import RunStatus
from . import replay, run_status


def complete_run(run_id: int, detail: str) -> None:
    if run_status.end_run(run_id, RunStatus.COMPLETED, detail, sources=run_status.STEP_HOLDS):
        replay.offer_when_finished(run_id)
