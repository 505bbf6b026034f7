"""A run's search state, rebuilt from the database at the start of every step.

Nothing here is cached between steps: the best config, the trace, the frozen set and the
guidance are derived from Iteration and OuterCycle rows, so a worker restart, a mechanism
swap or a resume loses nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trainer.schema import config_to_json, default_config, schema_json, validate_config

from ..models import Experiment, Iteration, IterationKind, IterationStatus, OuterCycle, Run


def config_key(config: dict[str, Any]) -> str:
    """A canonical text form of a full config, for duplicate detection."""
    return json.dumps(config_to_json(config), sort_keys=True)


@dataclass
class RunState:
    run: Run
    experiment: Experiment
    iterations: list[Iteration]
    outer_cycles: list[OuterCycle]

    @classmethod
    def load(cls, run: Run) -> RunState:
        return cls(
            run=run,
            experiment=run.experiment,
            iterations=list(run.iteration_set.order_by("index")),
            outer_cycles=list(run.outer_cycles.order_by("index")),
        )

    # -- the configuration being improved -------------------------------------------------

    @property
    def preset(self) -> str:
        return self.experiment.preset

    @property
    def base_config(self) -> dict[str, Any]:
        overrides = self.experiment.base_config or {}
        return config_to_json(validate_config({**default_config(self.preset), **overrides}, preset=self.preset))

    @property
    def baseline(self) -> Iteration | None:
        return next((it for it in self.iterations if it.kind == IterationKind.BASELINE), None)

    @property
    def baseline_values(self) -> list[float]:
        return [
            it.val_bpb
            for it in self.iterations
            if it.kind in (IterationKind.BASELINE, IterationKind.BASELINE_REPEAT) and it.val_bpb is not None
        ]

    @property
    def incumbent(self) -> Iteration | None:
        """The iteration whose config is the current best: the last kept one, else the baseline."""
        for iteration in reversed(self.iterations):
            if iteration.status == IterationStatus.KEEP:
                return iteration
        return self.baseline

    @property
    def best_config(self) -> dict[str, Any]:
        incumbent = self.incumbent
        return dict(incumbent.config) if incumbent is not None else self.base_config

    @property
    def best_value(self) -> float | None:
        incumbent = self.incumbent
        if incumbent is None:
            return None
        if incumbent.kind == IterationKind.BASELINE:
            values = self.baseline_values
            return sum(values) / len(values) if values else None
        return incumbent.val_bpb

    # -- counters ----------------------------------------------------------------------

    @property
    def next_index(self) -> int:
        return self.iterations[-1].index + 1 if self.iterations else 0

    @property
    def proposals(self) -> list[Iteration]:
        return [it for it in self.iterations if it.kind == IterationKind.PROPOSAL]

    @property
    def proposals_done(self) -> int:
        return len(self.proposals)

    # -- Level 1.5 ---------------------------------------------------------------------

    @property
    def frozen(self) -> list[str]:
        return list(self.outer_cycles[-1].frozen) if self.outer_cycles else []

    @property
    def guidance(self) -> str:
        return self.outer_cycles[-1].guidance if self.outer_cycles else ""

    @property
    def strategy(self) -> str:
        return self.outer_cycles[-1].strategy if self.outer_cycles else ""

    def tried_config_keys(self) -> set[str]:
        return {config_key(it.config) for it in self.iterations if it.config}

    # -- the view agents and mechanisms see ---------------------------------------------

    def trace(self) -> list[dict[str, Any]]:
        return [it.as_trace_record() for it in self.iterations]

    def view(self) -> dict[str, Any]:
        """The read-only JSON state passed to agents and mechanism hooks (see mechanisms/protocol.py)."""
        incumbent = self.incumbent
        return {
            "iteration": self.next_index,
            "preset": self.preset,
            "search_space": schema_json(self.preset),
            "frozen": self.frozen,
            "guidance": self.guidance,
            "strategy": self.strategy,
            "config": self.best_config,
            "best": {"val_bpb": self.best_value, "iteration": incumbent.index if incumbent else None},
            "baseline": {"val_bpb": self.run.baseline_val_bpb, "noise_sd": self.run.noise_sd},
            "trace": self.trace(),
        }
