"""How well a real LLM endpoint drives all three levels: issue 15's measurement, repeatable.

    .venv/bin/python bench/local_llm_measure.py --base-url http://127.0.0.1:PORT/v1 --model NAME \
        [--iterations 10] [--repeats 2] [--groups A,C] [--seed N] [--local-server] [--keep-data] \
        [--record tests/fixtures/llm_transcripts/NAME.json]

Groups A and C on the surrogate objective (T, K=3, M=1, review gate off), every step and Level 2
session run in this process against the endpoint, in a throw-away SQLite database. Prints the share
of proposals valid within two asks, the invalid proposals with their reasons, the largest prompt per
level (estimated tokens) against the context window, and how far each Level 2 session got. With
--record, every call's level, purpose, prompt and reply are written as a replay fixture for the
suite. --seed sets the experiment's seed base (runs, surrogate noise and agent randomness follow it). The
throw-away data folder is removed at the end unless --keep-data. --local-server treats the endpoint as the
launcher treats its llama.cpp server: its speed is measured first and shared, and a slow reply is waited
for instead of asked again; the summary says how often the first Level 2 call was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", default="")
    parser.add_argument("--groups", default="A,C", help="comma-separated groups (default A,C)")
    parser.add_argument("--seed", type=int, default=0, help="the experiment's seed base (default 0)")
    parser.add_argument("--local-server", action="store_true",
                        help="a llama.cpp server: measure its speed first, wait for slow replies, never ask twice")
    parser.add_argument("--keep-data", action="store_true", help="keep the throw-away data folder (SQLite, logs)")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="bilevel-llm-measure-")
    try:
        report = measure_in(data_dir, args)
    finally:
        if args.keep_data:
            print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(report["summary"], indent=1))
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(report["transcript"], indent=1, ensure_ascii=False) + "\n")
        print(f"transcript of {len(report['transcript']['calls'])} calls written to {args.record}")


def measure_in(data_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """The measurement on a fresh SQLite database in `data_dir`, every connection to it closed at the end."""
    os.environ.update(BILEVEL_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="bilevel_site.settings")
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    try:
        call_command("migrate", verbosity=0)
        if args.local_server:
            probe_local_server(args)
        return measure(args)
    finally:
        connections.close_all()


def probe_local_server(args: argparse.Namespace) -> None:
    from django.conf import settings

    from runs.engine.agents.factory import measure_endpoint, shared_profiles

    profile = measure_endpoint(args.base_url, args.model, shared_profiles(), cancels_abandoned=False,
                               timeout=settings.LLM_MAX_TIMEOUT_SECONDS, nonce=secrets.token_hex(4))
    print(f"probe: {(profile.seconds_per_token or 0) * 1000:.0f} ms per token, shared with every call that follows")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from mechanisms.context_budget import estimate_tokens
    from mechanisms.models import ResearchSession
    from runs.engine.control import create_runs
    from runs.models import Experiment, Iteration, IterationKind, IterationStatus, LLMCall
    from tests.engine.helpers import drive_with_research

    experiment = Experiment.objects.create(
        name="local LLM measurement", groups=args.groups.split(","), repeats=args.repeats, iterations=args.iterations,
        strategy_interval=3, research_interval=1, objective="surrogate", budget_value=1.5e12, review_gate=False,
        agent_backend="llm", llm_base_url=args.base_url, llm_model=args.model, seed_base=args.seed)
    runs = create_runs(experiment)
    started = time.monotonic()
    for run in runs:  # steps and sessions run here, in order, instead of in workers
        drive_with_research(run, max_steps=10 * args.iterations)
    wall = time.monotonic() - started

    proposals = list(Iteration.objects.filter(run__experiment=experiment, kind=IterationKind.PROPOSAL))
    valid = [p for p in proposals if p.status != IterationStatus.INVALID_PROPOSAL]
    within_two = [p for p in valid if len(p.rejected_attempts) <= 1]
    calls = list(LLMCall.objects.filter(run__experiment=experiment).order_by("pk")) + list(
        LLMCall.objects.filter(research_session__run__experiment=experiment, run__isnull=True).order_by("pk"))
    largest: dict[str, int] = {}
    for call in calls:
        largest[call.level] = max(largest.get(call.level, 0), estimate_tokens(call.prompt))
    session_rows = []
    for session in ResearchSession.objects.filter(run__experiment=experiment).order_by("pk"):
        rounds = session.artifacts.get("rounds", []) if isinstance(session.artifacts, dict) else []
        generate = [r for r in rounds if r.get("round") == "generate"]
        reached_dry_run = any(r.get("error") is None or "'dry_run'" in str(r.get("error")) for r in generate)
        session_rows.append({"status": session.status, "detail": session.status_detail[:300],
                             "rounds": len(rounds), "reached_dry_run": reached_dry_run,
                             "furthest": furthest_rung(session.status, rounds)})
    summary = {
        "model": args.model, "wall_seconds": round(wall, 1), "proposals": len(proposals),
        "valid": len(valid), "valid_within_two_asks": len(within_two),
        "valid_within_two_asks_ratio": round(len(within_two) / len(proposals), 3) if proposals else None,
        "invalid_reasons": [p.error[:200] for p in proposals if p.status == IterationStatus.INVALID_PROPOSAL],
        "largest_prompt_tokens_by_level": largest,
        "context_tokens": int(os.environ.get("LLM_CONTEXT_TOKENS", "8192")),
        "llm_calls": len(calls), "llm_call_errors": sum(1 for c in calls if c.error),
        "llm_seconds": round(sum(c.latency_seconds for c in calls), 1),
        "seconds_per_call_by_level": {
            level: {"calls": len(times), "mean": round(sum(times) / len(times), 1), "max": round(max(times), 1)}
            for level in sorted({c.level for c in calls})
            for times in [[c.latency_seconds for c in calls if c.level == level and not c.error]] if times},
        "seed": args.seed,
        "first_level2_call": first_call_sends([c for c in calls if c.level == "2"]),
        "sessions": session_rows,
        "sessions_reaching_dry_run": sum(1 for s in session_rows if s["reached_dry_run"]),
    }
    transcript = {
        "model": args.model,
        "experiment": {"groups": args.groups.split(","), "repeats": args.repeats, "iterations": args.iterations,
                       "strategy_interval": 3, "research_interval": 1},
        "summary": summary,
        "calls": [{"level": c.level, "purpose": c.purpose, "prompt": c.prompt, "reply": c.reply, "error": c.error}
                  for c in calls],
    }
    return {"summary": summary, "transcript": transcript}


def first_call_sends(calls: list[Any]) -> dict[str, Any]:
    """The first Level 2 call until its first reply: how often it was sent, and each row's timeout."""
    rows = []
    for call in calls:
        rows.append(call)
        if not call.error:
            break
    # A "waiting past the timeout" row is the same request, still awaited; every other failed row was a send.
    sends = sum(1 for c in rows if not c.error.startswith("waiting past the timeout"))
    return {"purpose": rows[0].purpose if rows else None, "sent": sends,
            "timeouts_seconds": [c.timeout_seconds for c in rows], "seconds": round(sum(
                c.latency_seconds for c in rows if not c.error.startswith("waiting past the timeout")), 1)}


def furthest_rung(status: str, rounds: list[dict[str, Any]]) -> str:
    """How far a session got: 'produced', or its last round (for generate: the ladder step it failed at)."""
    if status == "produced":
        return "produced (passed the whole ladder)"
    if not rounds:
        return "no round"
    last = rounds[-1]
    error = str(last.get("error") or "")
    for step in ("spec", "static", "import", "dry_run"):
        if f"step '{step}'" in error:
            return f"{last.get('round')}: ladder step {step}"
    return f"{last.get('round')}: {error[:80]}"


if __name__ == "__main__":
    main()
