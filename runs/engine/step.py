"""The search engine: one step = one iteration of a run, readable top to bottom.

A step claims the run's lease (``lease.py``), rebuilds the run's state from the database, and
then does exactly one thing: a baseline training, a Level 2 wait at an outer-cycle boundary
(``outer_cycle.py``, ``level2.py``), or a Level 1 proposal (``proposals.py``) that is trained,
judged (``acceptance.py`` and the mechanisms' ``accept`` hooks) and recorded
(``recording.py``) in one transaction that checks the lease is still ours. So two workers
never record the same step, and a killed worker's step is simply done again by the next one.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from trainer.outcomes import TrainingSummary

from ..models import AcceptancePolicy, IterationKind, IterationStatus, Run, RunStatus
from . import acceptance, confirmation, replay, run_status
from .events import progress_event, publish_run_event
from .lease import CONNECTION_ERRORS, Fenced, LeaseKeeper, claim_step, release_lease_and_continue, retrying_database
from .mechanism_bridge import RuntimeHandle, activate_approved_mechanisms, attach_library_mechanisms, open_runtime
from .objective import evaluate, evaluate_real
from .outer_cycle import outer_cycle_boundary
from .proposals import Proposed, propose
from .recording import record_iteration
from .state import RunState
from .step_context import StepAborted, StepContext

logger = logging.getLogger(__name__)

BASELINE_REPEAT_SEED_OFFSET = 1000
LIVE_PROGRESS_EVERY_SECONDS = 1.0
DATABASE_QUIET_SECONDS = 5.0


def execute_step(run_id: int, ticket: int, worker: str = "worker") -> str:
    """Claim and run one step of a run. Returns what happened (for logs and tests)."""
    owner = f"{worker}:{uuid.uuid4().hex[:10]}"
    held = claim_step(run_id, ticket, owner)
    if held is None:
        return "not-claimed"
    keeper = LeaseKeeper(run_id, owner, held)
    keeper.start()
    try:
        outcome = Step(run_id, owner, keeper).run()
    except Fenced as refused:
        # Cut off and taken over: the other worker's result stands; this one goes on with new work.
        outcome = f"fenced: {refused}"
        logger.warning("run %s: %s", run_id, refused)
    except StepAborted as aborted:
        outcome = f"aborted: {aborted}"
        logger.info("run %s step aborted: %s", run_id, aborted)
    except CONNECTION_ERRORS as error:
        # The database went away outside a commit (which retries by itself): not the run's fault.
        # The step is released below and done again, or taken over once this lease expires.
        outcome = "database-lost"
        logger.warning("run %s: the database connection broke mid-step (%s); the step will be retried", run_id, error)
        connection.close()
    except Exception as error:
        logger.exception("run %s step failed", run_id)
        run_status.end_run(run_id, RunStatus.FAILED, f"step failed: {type(error).__name__}: {error}",
                           where={"lease_owner": owner, "lease_ticket": held})
        outcome = "failed"
    finally:
        keeper.stop()
        try:
            retrying_database(f"run {run_id}: releasing the lease", lambda: release_lease_and_continue(run_id, owner),
                              give_up_after=settings.STEP_LEASE_SECONDS)
        except CONNECTION_ERRORS:
            logger.warning("run %s: could not release the lease; it expires and the step is taken over", run_id)
        close_old_connections()
    return outcome


class Step:
    def __init__(self, run_id: int, owner: str, keeper: LeaseKeeper) -> None:
        run = Run.all_objects.select_related("experiment").get(pk=run_id)
        self.ctx = StepContext(run=run, state=RunState.load(run), owner=owner, keeper=keeper)

    @property
    def run_id(self) -> int:
        return self.ctx.run_id

    @property
    def ticket(self) -> int:
        return self.ctx.ticket

    def run(self) -> str:
        if self.ctx.state.proposals_done >= self.ctx.experiment.iterations:
            return confirmation.confirm_or_finish(self.ctx, self._evaluate)
        if not self.ctx.run.random_control and not self.ctx.run.is_replay:  # a replay's come from its schedule
            attach_library_mechanisms(self.ctx.run)
            activate_approved_mechanisms(self.ctx.run, self.ctx.state.next_index)
        if self.ctx.state.baseline is None:
            return self._train_baseline(IterationKind.BASELINE, self.ctx.run.seed)
        experiment = self.ctx.experiment
        noise_aware = experiment.acceptance_policy == AcceptancePolicy.NOISE_AWARE
        repeats_wanted = experiment.baseline_repeats if noise_aware else 1
        have = len(self.ctx.state.baseline_values)
        if have < repeats_wanted and not self.ctx.state.proposals:
            return self._train_baseline(
                IterationKind.BASELINE_REPEAT, self.ctx.run.seed + BASELINE_REPEAT_SEED_OFFSET * have
            )
        waiting = outer_cycle_boundary(self.ctx)
        if waiting is not None:
            return f"waiting: {waiting}"
        return self._proposal()

    # -- baseline ------------------------------------------------------------------------

    def _train_baseline(self, kind: str, seed: int) -> str:
        config = self.ctx.state.base_config
        summary = self._evaluate(config, seed)
        values = [*self.ctx.state.baseline_values]
        status = IterationStatus.BASELINE if summary.ok else IterationStatus.CRASH
        if summary.ok and summary.val_bpb is not None:
            values.append(summary.val_bpb)
        elif kind == IterationKind.BASELINE:
            # Without a baseline nothing can be compared: say so and stop, never guess.
            record_iteration(self.ctx, kind=kind, config=config, summary=summary, status=status, proposed=Proposed())
            run_status.end_run(self.run_id, RunStatus.FAILED,
                               f"the baseline training failed ({summary.failure_class}): {summary.error}",
                               sources=run_status.STEP_HOLDS)
            return "baseline-failed"
        noise_sd = acceptance.sample_sd(values)
        record_iteration(self.ctx,
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

    # -- Level 1 ----------------------------------------------------------------------------

    def _proposal(self) -> str:
        with open_runtime(self.ctx.run, self.ctx.state) as runtime:
            proposed = propose(self.ctx, runtime)
            if not proposed.config:
                record_iteration(
                    self.ctx,
                    kind=IterationKind.PROPOSAL,
                    config={},
                    summary=None,
                    status=IterationStatus.INVALID_PROPOSAL,
                    proposed=proposed,
                    runtime=runtime,
                )
                return str(IterationStatus.INVALID_PROPOSAL)
            summary = self._evaluate(proposed.config, self.ctx.run.seed)
            status, reason, evaluations, summary = self._decide(proposed, summary, runtime)
            record_iteration(
                self.ctx,
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

    def _decide(
        self, proposed: Proposed, summary: TrainingSummary, runtime: RuntimeHandle
    ) -> tuple[str, str, list[float], TrainingSummary]:
        best = self.ctx.state.best_value
        if not summary.ok or summary.val_bpb is None or best is None:
            return IterationStatus.CRASH, f"training {summary.failure_class}", [], summary
        policy = self.ctx.experiment.acceptance_policy
        verdict = acceptance.first_verdict(
            policy, summary.val_bpb, best, self.ctx.run.noise_sd, self.ctx.experiment.noise_k
        )
        evaluations = [summary.val_bpb]
        if verdict.needs_reevaluation:
            again = self._evaluate(proposed.config, self.ctx.run.seed + acceptance.REEVALUATION_SEED_OFFSET)
            if again.ok and again.val_bpb is not None:
                evaluations.append(again.val_bpb)
                summary.training_seconds += again.training_seconds
                summary.eval_seconds += again.eval_seconds
                summary.wall_seconds += again.wall_seconds
                assert self.ctx.run.noise_sd is not None
                verdict = acceptance.final_verdict(
                    evaluations, best, self.ctx.run.noise_sd, self.ctx.experiment.noise_k
                )
            else:
                verdict = acceptance.Verdict(False, False, f"re-evaluation {again.failure_class}: not kept")
        value = sum(evaluations) / len(evaluations)
        keep, by, reason = runtime.accept(
            {
                "val_bpb": value,
                "status": "keep" if verdict.keep else "discard",
                "changes": proposed.changes,
                "best_val_bpb": best,
                "noise_sd": self.ctx.run.noise_sd,
            },
            verdict.keep,
            self.ctx.state.view(),
        )
        final_reason = verdict.reason if by is None else f"{verdict.reason}; overridden by {by}: {reason}"
        return (IterationStatus.KEEP if keep else IterationStatus.DISCARD), final_reason, evaluations, summary

    # -- training ---------------------------------------------------------------------------

    def _evaluate(self, config: dict[str, Any], seed: int, real: bool = False) -> TrainingSummary:
        """Train ``config`` on the experiment's objective, or (``real``) on the real trainer whatever it is."""
        if self.ctx.run.is_replay:
            recorded = replay.recorded_summary(self.ctx.run, config, seed, real)
            if recorded is not None:
                return recorded
        index = self.ctx.state.next_index
        last_write = [0.0]
        points: list[list[Any]] = []
        check_every = [time.monotonic()]
        database_quiet_until = [0.0]

        def on_progress(line: dict[str, Any]) -> None:
            if self.ctx.keeper.lost.is_set():
                raise StepAborted("the step's lease was lost to another worker")
            points.append([line.get("step", 0), line.get("train_loss")])
            publish_run_event(self.run_id, progress_event(self.run_id, index, line))
            now = time.monotonic()
            if now < database_quiet_until[0]:
                return
            try:
                if now - last_write[0] >= LIVE_PROGRESS_EVERY_SECONDS:
                    last_write[0] = now
                    # Only while the lease is ours: a cut-off holder must not overwrite its successor's.
                    Run.all_objects.filter(pk=self.run_id, lease_owner=self.ctx.owner).update(
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
                    status = Run.all_objects.values_list("status", flat=True).get(pk=self.run_id)
                    if status == RunStatus.CANCELLED:
                        raise StepAborted("the run was cancelled")
            except CONNECTION_ERRORS as error:
                # Live progress is a convenience: training goes on (without waiting on the database for
                # a while), and the commit retries by itself.
                logger.warning("run %s: live progress not written, the database did not answer (%s)",
                               self.run_id, error)
                connection.close()
                database_quiet_until[0] = time.monotonic() + DATABASE_QUIET_SECONDS

        name = f"{'real-' if real else ''}iteration-{index}-seed-{seed}"
        workdir = Path(settings.TRAINER_WORKDIR) / f"run-{self.run_id}" / name
        summary = (evaluate_real if real else evaluate)(
            config, experiment=self.ctx.experiment, seed=seed, workdir=workdir, on_progress=on_progress
        )
        summary.extra["curve"] = points
        return summary
