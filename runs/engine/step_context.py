"""What one step works with: the claimed run, its state rebuilt from the database, its lease."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..models import Experiment, Run
from .lease import LeaseKeeper
from .state import RunState
from .step_errors import StepAborted

__all__ = ["StepAborted", "StepContext"]


@dataclass
class StepContext:
    run: Run
    state: RunState
    owner: str
    keeper: LeaseKeeper
    started: float = field(default_factory=time.monotonic)
    strategy_seconds: float = 0.0

    @property
    def experiment(self) -> Experiment:
        return self.run.experiment

    @property
    def run_id(self) -> int:
        return int(self.run.pk)

    @property
    def ticket(self) -> int:
        """The lease ticket this step holds: every commit of its result carries it (fencing)."""
        assert self.keeper.ticket is not None, "a step runs only under a claimed lease"
        return self.keeper.ticket
