"""JSON shapes of runs and iterations, shared by live events, the JSON API and exports."""

from __future__ import annotations

from typing import Any

from .models import Iteration, OuterCycle, Run


def iteration_to_dict(iteration: Iteration) -> dict[str, Any]:
    return {
        "run": iteration.run_id,
        "index": iteration.index,
        "kind": iteration.kind,
        "status": iteration.status,
        "failure_class": iteration.failure_class,
        "changes": iteration.changes,
        "hypothesis": iteration.hypothesis,
        "proposal_source": iteration.proposal_source,
        "val_bpb": iteration.val_bpb,
        "evaluations": iteration.evaluations,
        "best_before": iteration.best_before,
        "decision_reason": iteration.decision_reason,
        "wall_seconds": iteration.wall_seconds,
        "training_seconds": iteration.training_seconds,
        "eval_seconds": iteration.eval_seconds,
        "agent_seconds": iteration.agent_seconds,
        "overhead_seconds": iteration.overhead_seconds,
        "simulated_seconds": iteration.simulated_seconds,
        "extrapolated": iteration.extrapolated,
        "support_distance": iteration.support_distance,
        "nearest_measured_val_bpb": iteration.nearest_measured_val_bpb,
        "steps": iteration.steps,
        "tokens": iteration.tokens,
        "mechanism_effects": iteration.mechanism_effects,
        "hook_calls": iteration.hook_calls,
        "rejected_attempts": iteration.rejected_attempts,
        "error": iteration.error,
        "host": iteration.host,
        "device": iteration.device,
        "created_at": iteration.created_at.isoformat() if iteration.created_at else None,
    }


def outer_cycle_to_dict(cycle: OuterCycle) -> dict[str, Any]:
    return {
        "run": cycle.run_id,
        "index": cycle.index,
        "after_iteration": cycle.after_iteration,
        "frozen": cycle.frozen,
        "newly_frozen": cycle.newly_frozen,
        "unfrozen": cycle.unfrozen,
        "guidance": cycle.guidance,
        "strategy": cycle.strategy,
        "reasons": cycle.reasons,
    }


def run_to_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "experiment": run.experiment_id,
        "group": run.group,
        "repeat": run.repeat,
        "seed": run.seed,
        "level_strategy": run.level_strategy,
        "level_research": run.level_research,
        "random_control": run.random_control,
        "status": run.status,
        "status_detail": run.status_detail,
        "baseline_val_bpb": run.baseline_val_bpb,
        "noise_sd": run.noise_sd,
        "best_val_bpb": run.best_val_bpb,
        "best_iteration": run.best_iteration,
        "proposals_done": run.proposals_done,
        "tags": run.tags,
        "notes": run.notes,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "waiting_since": run.waiting_since.isoformat() if run.waiting_since else None,
        "kind": run.kind,
        "replay_of": run.replay_of_id,
        "replay_from_iteration": run.replay_from_iteration,
        "replay_removed": [entry["name"] for entry in run.replay_removed],
        "replay_llm_diverged_at": run.replay_llm_diverged_at,
    }
