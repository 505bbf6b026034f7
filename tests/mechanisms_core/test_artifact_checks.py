"""A well-formed Level 2 reply that says nothing (the template echoed, equal scores, no citation of the
trace) is repaired with the defect quoted, and the session fails honestly if the repair says nothing too."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from mechanisms.research.session import ResearchContext, builtin_responder, run_session
from mechanisms.validation.ladder import TraceFixture, recorded_fixtures

Responder = Callable[[str, str], str]


@pytest.fixture(scope="module")
def fixated() -> TraceFixture:
    return next(f for f in recorded_fixtures() if f.name == "fixated_matrix_lr")


def context(fixture: TraceFixture) -> ResearchContext:
    return ResearchContext(trace=fixture.trace, state=fixture.state, fixtures=[], check_artifacts=True)


def scripted(ctx: ResearchContext, replies: dict[str, list[str]]) -> Responder:
    """Scripted replies per round, then the built-in responder's (a model that gets it right on repair)."""
    fallback = builtin_responder(ctx, seed=1)

    def respond(round_name: str, prompt: str) -> str:
        queue = replies.get(round_name, [])
        return queue.pop(0) if queue else fallback(round_name, prompt)

    return respond


def candidates(n: int = 3) -> list[dict[str, object]]:
    return [{"name": f"idea_{i}", "field": "bandits", "idea": f"variant {i}", "hooks": ["restrict"]} for i in range(n)]


ECHO = json.dumps({"diagnosis": "'candidates' must be a list of 3 or 4 mechanisms", "candidates": candidates()})
VAGUE = json.dumps({"diagnosis": "The search could be better.", "candidates": candidates()})


@pytest.mark.parametrize(("reply", "defect"), [
    (ECHO, "it repeats the reply format"),
    (VAGUE, "the diagnosis names nothing from the trace"),
])
def test_an_empty_explore_is_repaired_with_the_defect_quoted(fixated: TraceFixture, reply: str, defect: str) -> None:
    ctx = context(fixated)
    result = run_session(ctx, scripted(ctx, {"explore": [reply]}))
    assert result.status == "produced", result.reason
    first, repair = result.rounds[0], result.rounds[1]
    assert first["error"] is not None and defect in first["error"]
    assert repair["round"] == "explore" and repair["attempt"] == 1 and defect in repair["prompt"]
    assert "MATRIX_LR" in first["error"] or defect != "the diagnosis names nothing from the trace"


def test_equal_scores_twice_fail_the_session_with_the_reason(fixated: TraceFixture) -> None:
    ctx = context(fixated)
    flat = json.dumps({"scores": [{"name": n, "score": 0, "reason": "ok"} for n in ("a", "b", "c")],
                       "selected": "parameter_bandit"})
    result = run_session(ctx, scripted(ctx, {"critique": [flat] * 3}))
    assert result.status == "failed"
    assert "critique failed" in result.reason and "every candidate has the same score (0)" in result.reason


def test_the_builtin_heuristic_is_not_held_to_the_llm_checks(fixated: TraceFixture) -> None:
    ctx = ResearchContext(trace=fixated.trace, state=fixated.state, fixtures=[])
    flat = json.dumps({"scores": [{"name": n, "score": 0, "reason": "ok"} for n in ("a", "b")],
                       "selected": "parameter_bandit"})
    assert run_session(ctx, scripted(ctx, {"critique": [flat]})).status == "produced"
