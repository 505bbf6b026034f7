"""The search engine: one step = one iteration of a run (Level 1, with Level 1.5/2 at boundaries).

A step is claimed atomically (a conditional UPDATE on the run row that checks the step ticket
and the lease), its lease is renewed by a heartbeat thread while it works, the run's state is
rebuilt from the database, and the finished iteration is committed in one transaction that
also checks the lease is still ours. So two workers never record the same step, and a killed
worker's step is simply done again by the next one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from mechanisms.models import AttachmentStatus, MechanismAttachment
from trainer.outcomes import TrainingSummary
from trainer.schema import ConfigError, apply_changes, config_to_json

from . import acceptance
from .agents import AgentError, AgentUnavailable, ProposalRequest, StrategyRequest, build_agent
from .events import publish_run_event
from .mechanism_bridge import RuntimeHandle, open_runtime, record_runtime_outcome
from .models import (
    ACTIVE_RUN_STATUSES,
    IterationKind,
    IterationStatus,
    OuterCycle,
    Run,
    RunStatus,
)
from .objective import evaluate
from .serializers import iteration_to_dict, outer_cycle_to_dict
from .state import RunState, config_key
from .strategy import freeze_rule

logger = logging.getLogger(__name__)

MAX_PROPOSAL_ATTEMPTS = 4
REEVALUATION_SEED_OFFSET = 7919
BASELINE_REPEAT_SEED_OFFSET = 1000
LIVE_PROGRESS_EVERY_SECONDS = 1.0


class StepAborted(Exception):
    """The run was paused/cancelled or the lease was lost while training: drop this iteration."""


# -- claiming and the lease ---------------------------------------------------------------


def claim_step(run_id: int, ticket: int, owner: str) -> bool:
    now = timezone.now()
    claimed = (
        Run.objects.filter(pk=run_id, step_ticket=ticket, status__in=ACTIVE_RUN_STATUSES)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(
            status=RunStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=settings.STEP_LEASE_SECONDS),
            steps_claimed=F("steps_claimed") + 1,
        )
    )
    if claimed and Run.objects.filter(pk=run_id, started_at__isnull=True).update(started_at=now):
        publish_run_event(run_id, {"type": "status", "run": run_id, "status": RunStatus.RUNNING, "detail": "started"})
    return bool(claimed)


def renew_lease(run_id: int, owner: str) -> bool:
    return bool(
        Run.objects.filter(pk=run_id, lease_owner=owner).update(
            lease_expires_at=timezone.now() + timedelta(seconds=settings.STEP_LEASE_SECONDS)
        )
    )


class LeaseKeeper(threading.Thread):
    """Renews the step's lease every third of its length while the step runs in this process."""

    def __init__(self, run_id: int, owner: str) -> None:
        super().__init__(daemon=True, name=f"lease-{run_id}")
        self.run_id = run_id
        self.owner = owner
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.STEP_LEASE_SECONDS / 3):
                if not renew_lease(self.run_id, self.owner):
                    self.lost.set()
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


# -- the step ---------------------------------------------------------------------------


@dataclass
class Proposed:
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    hypothesis: str = ""
    source: str = "agent"
    rejected: list[dict[str, Any]] = field(default_factory=list)
    agent_seconds: float = 0.0
    error: str = ""


def execute_step(run_id: int, ticket: int, worker: str = "worker") -> str:
    """Claim and run one step of a run. Returns what happened (for logs and tests)."""
    owner = f"{worker}:{uuid.uuid4().hex[:10]}"
    if not claim_step(run_id, ticket, owner):
        return "not-claimed"
    keeper = LeaseKeeper(run_id, owner)
    keeper.start()
    try:
        outcome = Step(run_id, owner, keeper).run()
    except StepAborted as aborted:
        outcome = f"aborted: {aborted}"
        logger.info("run %s step aborted: %s", run_id, aborted)
    except Exception as error:
        logger.exception("run %s step failed", run_id)
        Run.objects.filter(pk=run_id, lease_owner=owner).update(
            status=RunStatus.FAILED,
            status_detail=f"step failed: {type(error).__name__}: {error}",
            finished_at=timezone.now(),
        )
        publish_run_event(run_id, {"type": "status", "run": run_id, "status": RunStatus.FAILED, "detail": str(error)})
        outcome = "failed"
    finally:
        keeper.stop()
        release_lease_and_continue(run_id, owner)
        close_old_connections()
    return outcome


def release_lease_and_continue(run_id: int, owner: str) -> None:
    """Give up the lease; if the run should go on, queue its next step."""
    from .control import enqueue_step

    with transaction.atomic():
        released = Run.objects.filter(pk=run_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
        if released and Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).exists():
            enqueue_step(run_id)


class Step:
    def __init__(self, run_id: int, owner: str, keeper: LeaseKeeper) -> None:
        self.owner = owner
        self.keeper = keeper
        self.run_obj = Run.objects.select_related("experiment").get(pk=run_id)
        self.state = RunState.load(self.run_obj)
        self.experiment = self.run_obj.experiment
        self.started = time.monotonic()

    @property
    def run_id(self) -> int:
        return self.run_obj.pk

    def run(self) -> str:
        if self.state.proposals_done >= self.experiment.iterations:
            self._finish(RunStatus.COMPLETED, f"{self.state.proposals_done} of {self.experiment.iterations} done")
            return "completed"
        if not self.run_obj.random_control:
            attach_library_mechanisms(self.run_obj)
            activate_approved_mechanisms(self.run_obj, self.state.next_index)
        if self.state.baseline is None:
            return self._train_baseline(IterationKind.BASELINE, self.run_obj.seed)
        repeats_wanted = (
            self.experiment.baseline_repeats if self.experiment.acceptance_policy == acceptance.NOISE_AWARE else 1
        )
        have = len(self.state.baseline_values)
        if have < repeats_wanted and not self.state.proposals:
            return self._train_baseline(
                IterationKind.BASELINE_REPEAT, self.run_obj.seed + BASELINE_REPEAT_SEED_OFFSET * have
            )
        self._outer_cycle_boundary()
        return self._proposal()

    # -- baseline ------------------------------------------------------------------------

    def _train_baseline(self, kind: str, seed: int) -> str:
        config = self.state.base_config
        summary = self._evaluate(config, seed)
        values = [*self.state.baseline_values]
        status = IterationStatus.BASELINE if summary.ok else IterationStatus.CRASH
        if summary.ok and summary.val_bpb is not None:
            values.append(summary.val_bpb)
        elif kind == IterationKind.BASELINE:
            # Without a baseline nothing can be compared: say so and stop, never guess.
            self._record(kind=kind, config=config, summary=summary, status=status, proposed=Proposed())
            self._finish(RunStatus.FAILED, f"the baseline training failed ({summary.failure_class}): {summary.error}")
            return "baseline-failed"
        noise_sd = acceptance.sample_sd(values)
        self._record(
            kind=kind,
            config=config,
            summary=summary,
            status=status,
            proposed=Proposed(hypothesis="baseline"),
            run_updates={
                "baseline_val_bpb": sum(values) / len(values),
                "noise_sd": noise_sd,
                "best_val_bpb": sum(values) / len(values),
                "best_iteration": 0,
            },
        )
        return kind

    # -- Level 1.5 and Level 2 boundaries -----------------------------------------------

    def _outer_cycle_boundary(self) -> None:
        done = self.state.proposals_done
        interval = self.experiment.strategy_interval
        if done == 0 or done % interval:
            return
        cycle_index = done // interval
        if self.run_obj.level_strategy and not any(c.index == cycle_index for c in self.state.outer_cycles):
            self._level_one_and_a_half(cycle_index)
        if self.run_obj.level_research and cycle_index % self.experiment.research_interval == 0:
            from mechanisms.research_tasks import request_research_session

            request_research_session(self.run_obj, cycle_index)

    def _level_one_and_a_half(self, cycle_index: int) -> None:
        view = self.state.view()
        history = [
            {
                "after_iteration": c.after_iteration,
                "frozen": c.frozen,
                "newly_frozen": c.newly_frozen,
                "unfrozen": c.unfrozen,
            }
            for c in self.state.outer_cycles
        ]
        decision = freeze_rule(view["trace"], view["search_space"], history)
        agent = build_agent(self.run_obj)
        reasons: dict[str, Any] = dict(decision.reasons)
        started = time.monotonic()
        try:
            reply = agent.strategize(
                StrategyRequest(
                    state={**view, "frozen": decision.frozen},
                    rule_summary=decision.summary(),
                    per_parameter=decision.per_parameter,
                )
            )
            guidance, strategy, reasons["agent"] = reply.guidance, reply.strategy, reply.reasoning
        except AgentError as error:
            guidance, strategy = self.state.guidance, self.state.strategy
            reasons["agent_error"] = f"the agent's strategy call failed; guidance unchanged: {error}"
        cycle = OuterCycle.objects.create(
            run=self.run_obj,
            index=cycle_index,
            after_iteration=self.state.iterations[-1].index,
            frozen=decision.frozen,
            newly_frozen=decision.newly_frozen,
            unfrozen=decision.unfrozen,
            guidance=guidance,
            strategy=strategy,
            reasons=reasons,
        )
        self.state.outer_cycles.append(cycle)
        self.strategy_seconds = time.monotonic() - started
        publish_run_event(self.run_id, {"type": "outer_cycle", "run": self.run_id, "cycle": outer_cycle_to_dict(cycle)})

    # -- Level 1 ----------------------------------------------------------------------------

    def _proposal(self) -> str:
        with open_runtime(self.run_obj, self.state) as runtime:
            proposed = self._propose(runtime)
            if not proposed.config:
                self._record(
                    kind=IterationKind.PROPOSAL,
                    config={},
                    summary=None,
                    status=IterationStatus.INVALID_PROPOSAL,
                    proposed=proposed,
                    runtime=runtime,
                )
                return str(IterationStatus.INVALID_PROPOSAL)
            summary = self._evaluate(proposed.config, self.run_obj.seed)
            status, reason, evaluations, summary = self._decide(proposed, summary, runtime)
            self._record(
                kind=IterationKind.PROPOSAL,
                config=proposed.config,
                summary=summary,
                status=status,
                proposed=proposed,
                runtime=runtime,
                reason=reason,
                evaluations=evaluations,
            )
        return str(status)

    def _propose(self, runtime: RuntimeHandle) -> Proposed:
        started = time.monotonic()
        view = self.state.view()
        frozen = set(self.state.frozen)
        changeable = [k["name"] for k in view["search_space"] if not k["locked"] and k["name"] not in frozen]
        restricted = runtime.restrict(view, changeable) if not self.run_obj.random_control else None
        allowed = sorted(restricted) if restricted is not None else changeable
        sections = runtime.prompt_sections(view) if not self.run_obj.random_control else []
        agent = build_agent(self.run_obj)
        tried = self.state.tried_config_keys()
        proposed = Proposed()
        rejection: str | None = None
        for attempt in range(1, MAX_PROPOSAL_ATTEMPTS + 1):
            source = "random" if self.run_obj.random_control else "agent"
            replacement, by = (None, None) if self.run_obj.random_control else runtime.propose(view)
            try:
                if replacement is not None:
                    changes, hypothesis, source = (
                        replacement["changes"],
                        replacement.get("hypothesis", ""),
                        f"mechanism:{by}",
                    )
                else:
                    reply = agent.propose(
                        ProposalRequest(
                            state=view,
                            allowed=allowed,
                            extra_sections=sections,
                            rejection=rejection,
                            previous_changes=proposed.rejected[-1].get("changes") if proposed.rejected else None,
                            attempt=attempt,
                            seed=self.run_obj.seed,
                        )
                    )
                    changes, hypothesis = reply.changes, reply.hypothesis
            except AgentError as error:
                rejection = str(error)
                proposed.rejected.append({"attempt": attempt, "source": source, "reason": rejection})
                if isinstance(error, AgentUnavailable):
                    # Its own retries are spent: re-asking would multiply them (and their timeouts).
                    proposed.error = f"the agent's endpoint is unavailable; not asked again this iteration: {error}"
                    break
                continue
            problem = self._check(changes, allowed, frozen, tried)
            if problem is None:
                config, diff = apply_changes(view["config"], changes, frozen=frozen, preset=self.state.preset)
                candidate = {
                    "changes": config_to_json({k: v["new"] for k, v in diff.items()}),
                    "hypothesis": hypothesis,
                }
                accepted, reason, by_filter = (
                    (True, None, None) if self.run_obj.random_control else runtime.filter(candidate, view)
                )
                if accepted:
                    proposed.changes = {k: config_to_json(v) for k, v in diff.items()}
                    proposed.config = config_to_json(config)
                    proposed.hypothesis = hypothesis
                    proposed.source = source
                    break
                problem = f"rejected by mechanism {by_filter}: {reason}"
            rejection = problem
            proposed.rejected.append(
                {"attempt": attempt, "source": source, "changes": _jsonable(changes), "reason": problem}
            )
        else:
            proposed.error = f"no valid proposal after {MAX_PROPOSAL_ATTEMPTS} attempts; last: {rejection}"
        proposed.agent_seconds = time.monotonic() - started
        return proposed

    def _check(self, changes: Any, allowed: list[str], frozen: set[str], tried: set[str]) -> str | None:
        if not isinstance(changes, dict) or not changes:
            return "a proposal must name at least one parameter to change"
        outside = sorted(
            name for name in changes if isinstance(name, str) and name not in allowed and name not in frozen
        )
        try:
            config, _ = apply_changes(self.state.best_config, changes, frozen=frozen, preset=self.state.preset)
        except ConfigError as error:
            return str(error)
        if outside:
            return f"only these parameters may change now: {', '.join(allowed)} (got {', '.join(outside)})"
        if config_key(config) in tried:
            return "this configuration was already evaluated; propose a change not tried before"
        return None

    def _decide(
        self, proposed: Proposed, summary: TrainingSummary, runtime: RuntimeHandle
    ) -> tuple[str, str, list[float], TrainingSummary]:
        best = self.state.best_value
        if not summary.ok or summary.val_bpb is None or best is None:
            return IterationStatus.CRASH, f"training {summary.failure_class}", [], summary
        policy = self.experiment.acceptance_policy
        verdict = acceptance.first_verdict(
            policy, summary.val_bpb, best, self.run_obj.noise_sd, self.experiment.noise_k
        )
        evaluations = [summary.val_bpb]
        if verdict.needs_reevaluation:
            again = self._evaluate(proposed.config, self.run_obj.seed + REEVALUATION_SEED_OFFSET)
            if again.ok and again.val_bpb is not None:
                evaluations.append(again.val_bpb)
                summary.training_seconds += again.training_seconds
                summary.eval_seconds += again.eval_seconds
                summary.wall_seconds += again.wall_seconds
                assert self.run_obj.noise_sd is not None
                verdict = acceptance.final_verdict(evaluations, best, self.run_obj.noise_sd, self.experiment.noise_k)
            else:
                verdict = acceptance.Verdict(False, False, f"re-evaluation {again.failure_class}: not kept")
        value = sum(evaluations) / len(evaluations)
        keep, by, reason = runtime.accept(
            {
                "val_bpb": value,
                "status": "keep" if verdict.keep else "discard",
                "changes": proposed.changes,
                "best_val_bpb": best,
                "noise_sd": self.run_obj.noise_sd,
            },
            verdict.keep,
            self.state.view(),
        )
        final_reason = verdict.reason if by is None else f"{verdict.reason}; overridden by {by}: {reason}"
        return (IterationStatus.KEEP if keep else IterationStatus.DISCARD), final_reason, evaluations, summary

    # -- training ---------------------------------------------------------------------------

    def _evaluate(self, config: dict[str, Any], seed: int) -> TrainingSummary:
        index = self.state.next_index
        last_write = [0.0]
        points: list[list[Any]] = []
        check_every = [time.monotonic()]

        def on_progress(line: dict[str, Any]) -> None:
            if self.keeper.lost.is_set():
                raise StepAborted("the step's lease was lost to another worker")
            points.append([line.get("step", 0), line.get("train_loss")])
            event = {"type": "progress", "run": self.run_id, "iteration": index, **line}
            publish_run_event(self.run_id, event)
            now = time.monotonic()
            if now - last_write[0] >= LIVE_PROGRESS_EVERY_SECONDS:
                last_write[0] = now
                Run.objects.filter(pk=self.run_id).update(
                    live_progress={
                        "iteration": index,
                        "points": points,
                        "step": line.get("step"),
                        "budget_fraction": line.get("budget_fraction"),
                        "elapsed": line.get("elapsed"),
                    }
                )
            if now - check_every[0] >= 2.0:
                check_every[0] = now
                status = Run.objects.values_list("status", flat=True).get(pk=self.run_id)
                if status == RunStatus.CANCELLED:
                    raise StepAborted("the run was cancelled")

        workdir = Path(settings.TRAINER_WORKDIR) / f"run-{self.run_id}" / f"iteration-{index}-seed-{seed}"
        summary = evaluate(config, experiment=self.experiment, seed=seed, workdir=workdir, on_progress=on_progress)
        summary.extra["curve"] = points
        return summary

    # -- recording ----------------------------------------------------------------------------

    def _record(
        self,
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
        index = self.state.next_index
        wall = time.monotonic() - self.started
        training = summary.training_seconds if summary else 0.0
        evaluation = summary.eval_seconds if summary else 0.0
        agent_seconds = proposed.agent_seconds + getattr(self, "strategy_seconds", 0.0)
        values = evaluations if evaluations is not None else ([summary.val_bpb] if summary and summary.val_bpb else [])
        value = sum(values) / len(values) if values else None
        best_before = self.state.best_value
        fields: dict[str, Any] = {
            "run": self.run_obj,
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
        }
        updates = dict(run_updates or {})
        if kind == IterationKind.PROPOSAL:
            updates["proposals_done"] = self.state.proposals_done + 1
            if status == IterationStatus.KEEP:
                updates.update(best_val_bpb=value, best_iteration=index)
        with transaction.atomic():
            if not Run.objects.select_for_update().filter(pk=self.run_id, lease_owner=self.owner).exists():
                raise StepAborted("the lease was lost before the iteration could be recorded")
            if runtime is not None:
                fields.update(record_runtime_outcome(self.run_obj, runtime, index))
            try:
                iteration = self.run_obj.iteration_set.create(**fields)
            except IntegrityError as error:
                raise StepAborted(f"iteration {index} was already recorded") from error
            Run.objects.filter(pk=self.run_id).update(live_progress={}, **updates)
        self.state.iterations.append(iteration)
        publish_run_event(
            self.run_id, {"type": "iteration", "run": self.run_id, "iteration": iteration_to_dict(iteration)}
        )
        if kind == IterationKind.PROPOSAL and self.state.proposals_done >= self.experiment.iterations:
            self._finish(RunStatus.COMPLETED, f"all {self.experiment.iterations} proposals done")

    def _finish(self, status: str, detail: str) -> None:
        # A pause requested during the last step must not leave a finished (or failed) run "paused".
        finished = Run.objects.filter(pk=self.run_id, status__in=(RunStatus.RUNNING, RunStatus.PAUSED)).update(
            status=status, status_detail=detail, finished_at=timezone.now()
        )
        if finished:
            publish_run_event(self.run_id, {"type": "status", "run": self.run_id, "status": status, "detail": detail})


def attach_library_mechanisms(run: Run) -> None:
    """Mechanisms a reviewer added to the experiment from the library join each run at its next step."""
    from mechanisms.lifecycle import transition

    attached = MechanismAttachment.objects.filter(run=run).values_list("mechanism_id", flat=True)
    for mechanism in run.experiment.library_mechanisms.filter(passed_ladder=True).exclude(pk__in=attached):
        attachment = MechanismAttachment.objects.create(
            run=run,
            mechanism=mechanism,
            ladder=[
                {
                    "step": "library",
                    "ok": True,
                    "seconds": 0.0,
                    "detail": "passed the validation ladder when first produced; attached from the library",
                }
            ],
        )
        transition(
            attachment,
            (AttachmentStatus.VALIDATING,),
            AttachmentStatus.APPROVED,
            note="attached from the mechanism library by a reviewer",
        )


def activate_approved_mechanisms(run: Run, at_iteration: int) -> None:
    """Approved mechanisms become active at the iteration boundary (the start of this step)."""
    from mechanisms.lifecycle import transition

    for attachment in MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.APPROVED):
        transition(
            attachment,
            (AttachmentStatus.APPROVED,),
            AttachmentStatus.ACTIVE,
            note="activated at iteration boundary",
            at_iteration=at_iteration,
            activated_at_iteration=at_iteration,
            activated_at=timezone.now(),
        )


def _jsonable(value: Any) -> Any:
    try:
        import json

        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:500]
