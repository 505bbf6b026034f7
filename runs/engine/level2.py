"""Level 2 as a step of the outer loop: the engine's side of mechanism research.

As in the paper's algorithm, the next outer cycle uses Level 2's outcome. At a Level 2 boundary
the run stops stepping and waits, holding no worker and no lease:

    running → researching        (the session runs on the `research` queue)
            → awaiting review    (review gate on, while a mechanism it produced is pending)
            → running            (the session ended and every mechanism was decided, or timed out)

and the next step is queued the moment the wait ends (session finished, reviewer decided,
review timed out), so when and whether a mechanism acts depends on the algorithm and on the
review decisions, never on worker speed. Level 2 itself (``mechanisms``) receives a plain trace
and returns a plain result; this module owns when it runs and what the run does meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import current_app
from django.db import IntegrityError, transaction
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from mechanisms.lifecycle import time_out_review
from mechanisms.models import AttachmentStatus, MechanismAttachment, ResearchSession, SessionStatus
from mechanisms.research import prompts as research_prompts
from mechanisms.research.session import CutOffReply, ResearchContext, SessionResult, builtin_responder, run_session
from mechanisms.research.storage import LIVE_STATUSES, store_session_result

from ..models import WAITING_RUN_STATUSES, AgentBackend, Run, RunStatus
from . import run_status
from .agents.factory import build_llm_agent
from .control import enqueue_step
from .events import publish_run_event
from .level2_progress import SessionProgress, publish_panel
from .state import RunState

logger = logging.getLogger(__name__)
# The runner's own source, shown to the Level 2 model (the protocol's callers).
RUNNER_SOURCES = (
    "runs/engine/step.py", "runs/engine/proposals.py", "runs/engine/mechanism_bridge.py", "mechanisms/runtime.py",
)
RESEARCH_SYSTEM = (
    "You are a research engineer improving an automated hyperparameter search by writing new search mechanisms "
    "as Python code that plugs into the runner through the documented hooks. Follow the requested reply format."
)
RESEARCH_TASK = "runs.tasks.run_research_session"


def research_due(run: Run, cycle_index: int) -> bool:
    return bool(run.level_research and cycle_index % run.experiment.research_interval == 0)


def wait_for_level2(run: Run, owner: str, cycle_index: int) -> str | None:
    """None when the run may go on; otherwise the run now waits (status set, session queued) and why."""
    session = ResearchSession.objects.filter(run=run, outer_cycle_index=cycle_index).first()
    if session is None:
        # The run waits first, then the session is queued: a session that ends at once finds the
        # run already waiting and can resume it.
        _wait(run, owner, RunStatus.RESEARCHING, f"Level 2 session for outer cycle {cycle_index}")
        _request_session(run, cycle_index)
        return "researching"
    if session.status == SessionStatus.RUNNING:
        _wait(run, owner, RunStatus.RESEARCHING, f"Level 2 session for outer cycle {cycle_index}")
        return "researching"
    pending = _pending(run)
    if pending:
        _wait(run, owner, RunStatus.AWAITING_REVIEW, _awaiting_detail(pending))
        return "awaiting review"
    return None


def _wait(run: Run, owner: str, status: str, detail: str) -> None:
    # waiting_since keeps the start of the whole wait (session, then review): the timeout counts from it.
    run_status.change_status(run.pk, (RunStatus.RUNNING,), status, detail, where={"lease_owner": owner},
                             waiting_since=Coalesce("waiting_since", Now()))


def _pending(run: Run) -> list[MechanismAttachment]:
    return list(MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.PENDING)
                .select_related("mechanism"))


def _awaiting_detail(pending: list[MechanismAttachment]) -> str:
    names = ", ".join(a.mechanism.name for a in pending)
    return f"waiting for a review decision on {names}"


def _request_session(run: Run, cycle_index: int) -> None:
    try:
        with transaction.atomic():
            session = ResearchSession.objects.create(
                run=run, outer_cycle_index=cycle_index, backend=run.experiment.agent_backend
            )
    except IntegrityError:
        return  # another step created it: that one queued it
    transaction.on_commit(lambda: current_app.send_task(RESEARCH_TASK, args=[session.pk]))


def resume(run_id: int, detail: str) -> bool:
    """End a Level 2 wait and queue the next step at once; False if the run was not waiting."""
    with transaction.atomic():
        resumed = run_status.change_status(run_id, WAITING_RUN_STATUSES, RunStatus.RUNNING, detail,
                                           waiting_since=None)
        if resumed:
            enqueue_step(run_id)
    return resumed


def resume_if_unblocked(run_id: int) -> None:
    run = Run.objects.get(pk=run_id)
    if run.status != RunStatus.AWAITING_REVIEW:
        return
    if not _pending(run):
        resume(run_id, "every mechanism of the Level 2 session was decided")


# -- the session (a `research` task) ---------------------------------------------------------


def runner_source() -> str:
    root = Path(__file__).resolve().parents[2]  # the project root
    return "\n\n".join(f"# ---- {name} ----\n{(root / name).read_text()}" for name in RUNNER_SOURCES)


def build_context(run: Run) -> ResearchContext:
    state = RunState.load(run)
    view: Any = state.view()
    history = [
        {
            "index": c.index,
            "after_iteration": c.after_iteration,
            "frozen": c.frozen,
            "newly_frozen": c.newly_frozen,
            "unfrozen": c.unfrozen,
            "guidance": c.guidance,
            "strategy": c.strategy,
            "reasons": c.reasons,
        }
        for c in state.outer_cycles
    ]
    active = list(
        MechanismAttachment.objects.filter(run=run, status__in=LIVE_STATUSES).values_list("mechanism__name", flat=True)
    )
    return ResearchContext(
        trace=view["trace"],
        state=view,
        runner_source=runner_source(),
        level15_history=history,
        active_mechanisms=active,
    )


def execute_research_session(session_id: int) -> str:
    session = ResearchSession.objects.select_related("run__experiment").get(pk=session_id)
    if session.status != SessionStatus.RUNNING:
        after_session(session)  # a redelivered task: make sure the run is not left waiting
        return f"session {session_id} already {session.status}"
    run = session.run
    context = build_context(run)
    progress = SessionProgress(session)
    context.on_progress = progress.on_progress  # the run page's live Level 2 panel
    respond: Callable[..., str]
    if run.experiment.agent_backend == AgentBackend.LLM:
        agent = build_llm_agent(run, research_session_id=session.pk, watch=progress)
        context.check_artifacts = True  # an LLM's artifacts are checked for echoes and empty critiques
        context.structured_output = True  # each JSON round's reply schema goes with its request

        def respond_with_llm(round_name: str, prompt: str, schema: dict[str, Any] | None = None,
                             attempt: int = 0) -> str:
            reply = agent.complete(
                level="2",
                purpose=round_name,
                system=RESEARCH_SYSTEM,
                prompt=prompt,
                json_reply=round_name != "generate",
                schema=schema,
                reply_tokens=research_prompts.REPLY_TOKENS[round_name],
                # A small model at the server's default (low) temperature answered a repair prompt with
                # its refused reply again, word for word, whatever the defect said.
                temperature=research_prompts.REPAIR_TEMPERATURE if attempt else None,
            )
            return CutOffReply(reply) if agent.last_cut_off else reply

        respond = respond_with_llm
    else:
        respond = builtin_responder(context, seed=run.seed * 1000 + session.outer_cycle_index)
    try:
        result = run_session(context, respond)
    except Exception as error:  # an agent failure after its own retries: the session fails, visibly
        logger.exception("research session %s failed", session_id)
        result = SessionResult(status="failed", reason=f"{type(error).__name__}: {error}")
    status = store_session_result(session, result)
    session.refresh_from_db()
    after_session(session)
    return status


def after_session(session: ResearchSession) -> None:
    """The session ended: wait for its review, or go on."""
    run = Run.objects.select_related("experiment").get(pk=session.run_id)
    pending = _pending(run)
    if pending:
        detail = _awaiting_detail(pending)
        run_status.change_status(run.pk, (RunStatus.RESEARCHING,), RunStatus.AWAITING_REVIEW, detail)
        return
    resume(run.pk, f"Level 2 session {session.outer_cycle_index}: {session.get_status_display().lower()}")


# -- the review policy and the mechanisms' life with the run ----------------------------------


def expire_reviews() -> list[int]:
    """Runs whose review waited past the experiment's timeout go on without the mechanism."""
    resumed = []
    now = timezone.now()
    for run in Run.objects.filter(status=RunStatus.AWAITING_REVIEW, experiment__review_timeout_minutes__isnull=False,
                                  waiting_since__isnull=False).select_related("experiment"):
        minutes = run.experiment.review_timeout_minutes
        assert minutes is not None and run.waiting_since is not None
        if run.waiting_since + timedelta(minutes=minutes) > now:
            continue
        for attachment in _pending(run):
            time_out_review(attachment, minutes)  # its signal resumes the run once none is pending
        resumed.append(run.pk)
    return resumed


# -- receivers of Level 2's signals (connected in RunsConfig.ready) ---------------------------

DECIDED = (AttachmentStatus.APPROVED, AttachmentStatus.REJECTED, AttachmentStatus.REVIEW_TIMED_OUT)


def on_attachment_changed(sender: Any, attachment: MechanismAttachment, from_status: str, to_status: str,
                          note: str, **kwargs: Any) -> None:
    publish_run_event(
        attachment.run_id,
        {"type": "mechanism", "run": attachment.run_id, "attachment": attachment.pk,
         "name": attachment.mechanism.name, "status": to_status, "note": note},
    )
    if from_status == AttachmentStatus.PENDING and to_status in DECIDED:
        transaction.on_commit(lambda: resume_if_unblocked(attachment.run_id))


def on_session_finished(sender: Any, session: ResearchSession, attachment: MechanismAttachment | None,
                        **kwargs: Any) -> None:
    publish_panel(session)  # its final state: the panel stays on the page whatever the outcome
    publish_run_event(
        session.run_id,
        {"type": "research", "run": session.run_id, "session": session.pk, "status": session.status,
         "detail": session.status_detail, "attachment": attachment.pk if attachment else None},
    )
