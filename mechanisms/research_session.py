"""Running one Level 2 session for a run (in a `research` worker) and storing everything it made.

The session's four rounds come from the run's agent: the built-in heuristic drafts from the
catalogue, an LLM writes whatever it writes; either way the code goes through the same
validation ladder in the sandbox. A validated mechanism is stored once (by code hash) and
attached to the run as `pending` (review gate on) or `approved` (gate off); the engine
activates approved ones at the next iteration boundary.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.agents.factory import build_llm_agent
from runs.events import publish_run_event
from runs.models import AgentBackend, Run
from runs.state import RunState

from . import research_prompts
from .builtin_research import ResearchContext, SessionResult, builtin_responder, run_session
from .lifecycle import transition
from .models import AttachmentStatus, Mechanism, MechanismAttachment, ResearchSession, SessionStatus

logger = logging.getLogger(__name__)
RUNNER_SOURCES = ("runs/engine.py", "runs/mechanism_bridge.py", "mechanisms/runtime.py")
RESEARCH_SYSTEM = (
    "You are a research engineer improving an automated hyperparameter search by writing new search mechanisms "
    "as Python code that plugs into the runner through the documented hooks. Follow the requested reply format."
)
LIVE_STATUSES = (AttachmentStatus.PENDING, AttachmentStatus.APPROVED, AttachmentStatus.ACTIVE)


def runner_source() -> str:
    root = Path(__file__).resolve().parent.parent
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
        return f"session {session_id} already {session.status}"
    run = session.run
    context = build_context(run)
    respond: Callable[[str, str], str]
    if run.experiment.agent_backend == AgentBackend.LLM:
        agent = build_llm_agent(run, research_session_id=session.pk)
        context.check_artifacts = True

        def respond_with_llm(round_name: str, prompt: str) -> str:
            return agent.complete(
                level="2",
                purpose=round_name,
                system=RESEARCH_SYSTEM,
                prompt=prompt,
                json_reply=round_name != "generate",
                reply_tokens=research_prompts.REPLY_TOKENS[round_name],
            )

        respond = respond_with_llm
    else:
        respond = builtin_responder(context, seed=run.seed * 1000 + session.outer_cycle_index)
    try:
        result = run_session(context, respond)
    except Exception as error:  # an agent failure after its own retries: the session fails, visibly
        logger.exception("research session %s failed", session_id)
        result = SessionResult(status="failed", reason=f"{type(error).__name__}: {error}")
    return store_session_result(session, result)


def store_session_result(session: ResearchSession, result: SessionResult) -> str:
    run = session.run
    artifacts = {
        "rounds": result.rounds,
        "explore": _parsed(result, "explore"),
        "critique": _parsed(result, "critique"),
        "spec": result.spec or _parsed(result, "specify"),
        "code": result.code or _last_code(result),
    }
    with transaction.atomic():
        session.artifacts = artifacts
        session.repair_rounds = sum(1 for r in result.rounds if r["attempt"] > 0)
        session.status = SessionStatus.PRODUCED if result.status == "produced" else SessionStatus.FAILED
        session.status_detail = result.reason
        session.finished_at = timezone.now()
        session.save()
        attachment = _attach(session, result, artifacts)
    publish_run_event(
        run.pk,
        {
            "type": "research",
            "run": run.pk,
            "session": session.pk,
            "status": session.status,
            "detail": result.reason,
            "attachment": attachment.pk if attachment else None,
        },
    )
    return session.status


def _attach(session: ResearchSession, result: SessionResult, artifacts: dict[str, Any]) -> MechanismAttachment | None:
    code = artifacts["code"]
    spec = artifacts["spec"] or {}
    if not code or result.ladder is None:
        return None  # nothing was generated: the session's status says why
    passed = result.status == "produced"
    code_hash = hashlib.sha256(code.encode()).hexdigest()
    mechanism, _ = Mechanism.objects.get_or_create(
        code_hash=code_hash,
        defaults={
            "name": str(spec.get("name") or spec.get("class_name") or "unnamed")[:120],
            "code": code,
            "spec": spec,
            "origin": "llm" if session.backend == AgentBackend.LLM else "builtin-catalogue",
            "passed_ladder": passed,
        },
    )
    if passed and not mechanism.passed_ladder:
        Mechanism.objects.filter(pk=mechanism.pk).update(passed_ladder=True)
    if (
        passed
        and MechanismAttachment.objects.filter(run=session.run, mechanism=mechanism, status__in=LIVE_STATUSES).exists()
    ):
        session.status_detail += "; identical to a mechanism already attached to this run, not attached again"
        session.save(update_fields=["status_detail"])
        return None
    attachment = MechanismAttachment.objects.create(
        run=session.run,
        mechanism=mechanism,
        session=session,
        ladder=result.ladder.steps,
        dry_run_report=result.ladder.dry_run_report,
    )
    if not passed:
        transition(
            attachment,
            (AttachmentStatus.VALIDATING,),
            AttachmentStatus.INVALID,
            note=result.reason,
            status_detail=result.reason,
        )
    elif session.run.experiment.review_gate:
        transition(
            attachment,
            (AttachmentStatus.VALIDATING,),
            AttachmentStatus.PENDING,
            note="passed the validation ladder; waiting for review",
        )
    else:
        transition(
            attachment,
            (AttachmentStatus.VALIDATING,),
            AttachmentStatus.APPROVED,
            note="passed the validation ladder; review gate off: activates at the next iteration",
        )
    return attachment


def _parsed(result: SessionResult, round_name: str) -> Any:
    for record in reversed(result.rounds):
        if record["round"] == round_name and record["error"] is None:
            return record["parsed"]
    return None


def _last_code(result: SessionResult) -> str | None:
    from .builtin_research import extract_code

    for record in reversed(result.rounds):
        if record["round"] == "generate" and record["reply"]:
            try:
                return extract_code(record["reply"])
            except ValueError:
                return None
    return None
