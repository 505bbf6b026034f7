"""Storing what one Level 2 session made: its artifacts, and its mechanism attached to the run.

The session itself (``research.session.run_session``) is plain: a trace in, a result out. The
engine (``runs.engine.level2``) decides when a session runs and what happens to the run meanwhile. A
validated mechanism is stored once (by code hash) and attached to the run as `pending` (review
gate on) or `approved` (gate off); the engine activates approved ones at the next iteration.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..lifecycle import transition
from ..models import AttachmentStatus, Mechanism, MechanismAttachment, ResearchSession, SessionStatus
from ..signals import session_finished
from .session import SessionResult

LIVE_STATUSES = (AttachmentStatus.PENDING, AttachmentStatus.APPROVED, AttachmentStatus.ACTIVE)
LLM_BACKEND = "llm"


def store_session_result(session: ResearchSession, result: SessionResult) -> str:
    artifacts = {
        "rounds": result.rounds,
        "explore": _parsed(result, "explore"),
        "critique": _parsed(result, "critique"),
        "spec": result.spec or _parsed(result, "specify"),
        "code": result.code or _last_code(result),
    }
    # What the engine recorded while the session ran (runs.engine.level2_progress: rounds, ladder steps, timings)
    # stays beside the result: the run page's Level 2 panel shows it after the session too.
    live = ResearchSession.objects.filter(pk=session.pk).values_list("artifacts", flat=True).first() or {}
    if isinstance(live, dict) and "progress" in live:
        artifacts["progress"] = live["progress"]
    with transaction.atomic():
        session.artifacts = artifacts
        session.repair_rounds = sum(1 for r in result.rounds if r["attempt"] > 0)
        session.status = SessionStatus.PRODUCED if result.status == "produced" else SessionStatus.FAILED
        session.status_detail = result.reason
        session.finished_at = timezone.now()
        session.save()
        attachment = _attach(session, result, artifacts)
    session_finished.send(ResearchSession, session=session, attachment=attachment)
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
            "origin": "llm" if session.backend == LLM_BACKEND else "builtin-catalogue",
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
    from .session import extract_code

    for record in reversed(result.rounds):
        if record["round"] == "generate" and record["reply"]:
            try:
                return extract_code(record["reply"])
            except ValueError:
                return None
    return None
