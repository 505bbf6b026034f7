"""Level 2 as it happens: the live panel of a research session on the run page.

A session on a CPU model takes ten minutes or more. While it runs, the research worker keeps its
progress (each round and repair round with its start and end, each validation step, the request in
flight) in the session's artifacts["progress"], and after every change pushes the whole panel to the
run's watchers, as training pushes its curve (Celery → Channels). The panel is rebuilt from the
database alone (progress + the session's LLMCall rows), so a page opened or reloaded at any time, during
the session or after it ended, shows the same thing.
"""

from __future__ import annotations

import time
from typing import Any

from mechanisms.models import ResearchSession, SessionStatus

from ..models import LLMCall
from .events import publish_run_event

WAITING_NOTE = "waiting past the timeout"  # runs.engine.agents.llm: the same request, still awaited (not a re-send)


class SessionProgress:
    """Receives a session's progress (mechanisms' on_progress, the agent's on_send, each recorded call),
    stores it on the session row and publishes the panel."""

    def __init__(self, session: ResearchSession) -> None:
        self.session_id = session.pk
        self.run_id = session.run_id
        self.progress: dict[str, Any] = {"rounds": [], "in_flight": None}

    def on_progress(self, event: dict[str, Any]) -> None:
        rounds: list[dict[str, Any]] = self.progress["rounds"]
        now = time.time()
        if event["event"] == "round":
            rounds.append({"round": event["round"], "attempt": event["attempt"], "started_at": now,
                           "ended_at": None, "error": None, "ladder": []})
        elif event["event"] == "round_end" and rounds:
            rounds[-1].update(ended_at=now, seconds=event["seconds"], error=event["error"])
        elif event["event"] == "ladder" and rounds:
            steps: list[dict[str, Any]] = rounds[-1]["ladder"]
            if "ok" in event:  # a step ended: its record replaces the "running" entry
                steps[-1:] = [{"step": event["step"], "ok": event["ok"], "seconds": event.get("seconds")}]
            else:
                steps.append({"step": event["step"], "ok": None, "started_at": now})
        self._changed()

    def on_send(self, request: dict[str, Any]) -> None:
        self.progress["in_flight"] = {**request, "started_at": time.time()}
        self._changed()

    def on_recorded(self, error: str) -> None:
        """A call's row was stored: its request is no longer in flight, unless the client still waits for it."""
        if not error.startswith(WAITING_NOTE):
            self.progress["in_flight"] = None
        self._changed()

    def _changed(self) -> None:
        session = ResearchSession.objects.filter(pk=self.session_id).first()
        if session is None or session.status != SessionStatus.RUNNING:
            return  # ended (or deleted) meanwhile: its final panel is already out
        session.artifacts = {**(session.artifacts or {}), "progress": self.progress}
        ResearchSession.objects.filter(pk=self.session_id).update(artifacts=session.artifacts)
        publish_panel(session)


def publish_panel(session: ResearchSession) -> None:
    publish_run_event(session.run_id, {"type": "level2", "run": session.run_id, "panel": level2_panel(session)})


def latest_panel(run_id: int) -> dict[str, Any] | None:
    """The panel of the run's latest session (running, or the last that ended), or None before any."""
    session = ResearchSession.objects.filter(run_id=run_id).order_by("-outer_cycle_index").first()
    return level2_panel(session) if session is not None else None


def level2_panel(session: ResearchSession) -> dict[str, Any]:
    artifacts = session.artifacts or {}
    progress = artifacts.get("progress") or {}
    rounds = progress.get("rounds") or recorded_rounds(artifacts)
    running = session.status == SessionStatus.RUNNING
    current = rounds[-1] if running and rounds and rounds[-1].get("ended_at") is None else None
    calls = [call_row(call) for call in LLMCall.objects.filter(research_session=session).order_by("pk")]
    return {
        "session": session.pk,
        "outer_cycle": session.outer_cycle_index,
        "backend": session.backend,
        "status": session.status,
        "status_display": session.get_status_display(),
        "detail": session.status_detail,
        "started_at": session.started_at.timestamp(),
        "finished_at": session.finished_at.timestamp() if session.finished_at else None,
        "server_now": time.time(),  # the page's clock may differ from the server's
        "rounds": rounds,
        "current": current,
        "in_flight": progress.get("in_flight") if running else None,
        "calls": calls,
        "totals": call_totals(calls),
    }


def recorded_rounds(artifacts: dict[str, Any]) -> list[dict[str, Any]]:
    """A session stored before progress was kept: its rounds from the result (durations, no clock times)."""
    return [{"round": r.get("round"), "attempt": r.get("attempt", 0), "started_at": None, "ended_at": None,
             "seconds": r.get("seconds"), "error": r.get("error"), "ladder": []}
            for r in artifacts.get("rounds") or [] if isinstance(r, dict)]


def call_row(call: LLMCall) -> dict[str, Any]:
    waiting = call.error.startswith(WAITING_NOTE)
    timed_out = waiting or "APITimeoutError" in call.error
    seconds = call.latency_seconds
    return {
        "at": call.created_at.timestamp(),
        "purpose": call.purpose,
        "tokens_in": call.tokens_in,
        "tokens_out": call.tokens_out,
        "seconds": round(seconds, 1),
        # Reply tokens per second of the whole call (prompt reading included): what a person waits for.
        "tokens_per_second": round(call.tokens_out / seconds, 2) if call.tokens_out and seconds > 0 else None,
        "timeout_seconds": call.timeout_seconds,
        "error": call.error[:300],
        "outcome": "waiting" if waiting else "timeout" if timed_out else "error" if call.error else "ok",
    }


def call_totals(calls: list[dict[str, Any]]) -> dict[str, int]:
    sent = [c for c in calls if c["outcome"] != "waiting"]  # a waiting row is its request's, not a new one
    retried = sum(1 for i, c in enumerate(sent) if c["outcome"] != "ok"
                  and any(later["purpose"] == c["purpose"] for later in sent[i + 1:]))
    return {
        "calls": len(sent),
        "timeouts": sum(1 for c in calls if c["outcome"] in ("timeout", "waiting")),
        "retries": retried,
        "tokens_in": sum(c["tokens_in"] for c in sent),
        "tokens_out": sum(c["tokens_out"] for c in sent),
    }
