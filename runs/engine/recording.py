"""Recording a step's outcome: the iteration row (one transaction that checks the lease), and the run's end."""

from __future__ import annotations

import math
import socket
import time
from typing import Any

from django.db import IntegrityError

from trainer.outcomes import TrainingSummary

from ..models import IterationKind, IterationStatus, Run
from ..serializers import iteration_to_dict
from .completion import complete_run
from .confirmation import wants_confirmation
from .devices import this_device
from .events import publish_run_event
from .lease import commit_as_holder
from .mechanism_bridge import RuntimeHandle, record_runtime_outcome
from .proposals import Proposed
from .step_context import StepAborted, StepContext


def record_iteration(
    ctx: StepContext,
    *,
    kind: str,
    config: dict[str, Any],
    summary: TrainingSummary | None,
    status: str,
    proposed: Proposed,
    runtime: RuntimeHandle | None = None,
    reason: str = "",
    evaluations: list[float] | None = None,
    run_updates: dict[str, Any] | None = None,
) -> None:
    """Commit the iteration (only while the lease is ours), with its mechanism attribution, then publish it."""
    index = ctx.state.next_index
    wall = time.monotonic() - ctx.started
    training = summary.training_seconds if summary else 0.0
    evaluation = summary.eval_seconds if summary else 0.0
    agent_seconds = proposed.agent_seconds + ctx.strategy_seconds
    values = evaluations if evaluations is not None else ([summary.val_bpb] if summary and summary.val_bpb else [])
    value = sum(values) / len(values) if values else None
    best_before = ctx.state.best_value
    fields: dict[str, Any] = {
        "run": ctx.run,
        "index": index,
        "kind": kind,
        "changes": proposed.changes,
        "config": config,
        "hypothesis": proposed.hypothesis,
        "proposal_source": proposed.source if kind == IterationKind.PROPOSAL else "",
        "val_bpb": value,
        "evaluations": values,
        "best_before": best_before,
        "decision_reason": reason,
        "status": status,
        "failure_class": (summary.failure_class if summary and not summary.ok else ""),
        "error": proposed.error or (summary.error or "" if summary and not summary.ok else ""),
        "wall_seconds": wall,
        "training_seconds": training,
        "eval_seconds": evaluation,
        "agent_seconds": agent_seconds,
        "overhead_seconds": max(0.0, wall - training - evaluation - agent_seconds),
        "simulated_seconds": summary.extra.get("simulated_seconds", 0.0) if summary else 0.0,
        "steps": summary.steps if summary else 0,
        "tokens": summary.tokens if summary else 0,
        "curve": summary.extra.get("curve", []) if summary else [],
        "rejected_attempts": proposed.rejected,
        "host": socket.gethostname()[:255],
        "device": this_device().label[:200],
        **support_fields(summary),
    }
    updates = dict(run_updates or {})
    if kind == IterationKind.PROPOSAL:
        updates["proposals_done"] = ctx.state.proposals_done + 1
        if status == IterationStatus.KEEP:
            updates.update(best_val_bpb=value, best_iteration=index)

    def write() -> Any:
        if runtime is not None:
            fields.update(record_runtime_outcome(ctx.run, runtime, index))
        try:
            created = ctx.run.iteration_set.create(**fields)
        except IntegrityError as error:
            raise StepAborted(f"iteration {index} was already recorded") from error
        Run.all_objects.filter(pk=ctx.run_id).update(live_progress={}, **updates)
        return created

    late = {"index": index, "kind": kind, "status": status, "val_bpb": value, "changes": proposed.changes,
            "config": config, "host": fields["host"], "device": fields["device"]}
    iteration = commit_as_holder(ctx.run_id, ctx.owner, ctx.ticket, write, f"iteration {index}", lambda: late)
    ctx.state.iterations.append(iteration)
    publish_run_event(
        ctx.run_id, {"type": "iteration", "run": ctx.run_id, "iteration": iteration_to_dict(iteration)}
    )
    done = ctx.state.proposals_done >= ctx.experiment.iterations
    # With confirmation on, the run ends after its re-trainings (the next steps), not here.
    if kind == IterationKind.PROPOSAL and done and not wants_confirmation(ctx.experiment):
        complete_run(ctx.run_id, f"all {ctx.experiment.iterations} proposals done")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def support_fields(summary: TrainingSummary | None) -> dict[str, Any]:
    """Where the surrogate stood for this config (its summary's extra): outside its measured support or not.

    Absent (the real trainer, or a surrogate that does not report it) means not marked; only a literal true
    marks a config as extrapolated.
    """
    extra = summary.extra if summary is not None else {}
    return {
        "extrapolated": extra.get("extrapolated") is True,
        "support_distance": _finite(extra.get("support_distance")),
        "nearest_measured_val_bpb": _finite(extra.get("nearest_measured_val_bpb")),
    }
