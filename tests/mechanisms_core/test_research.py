"""The four-round research session: built-in responder end to end, repair rounds, failure status."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from mechanisms.builtin_research import (
    BUILTIN_LABEL,
    ResearchContext,
    builtin_responder,
    diagnose,
    extract_code,
    run_session,
)
from mechanisms.ladder import TraceFixture, recorded_fixtures


@pytest.fixture(scope="module")
def fixtures() -> dict[str, TraceFixture]:
    return {f.name: f for f in recorded_fixtures()}


def _context(fixture: TraceFixture, others: list[TraceFixture], active: list[str] | None = None) -> ResearchContext:
    return ResearchContext(trace=fixture.trace, state=fixture.state, runner_source="def run_iteration(): ...",
                           active_mechanisms=active or [], fixtures=others)


def test_diagnosis_names_the_failure_modes(fixtures: dict[str, TraceFixture]) -> None:
    names = {name: [s.name for s in diagnose(f.trace, f.state["baseline"]["noise_sd"])]
             for name, f in fixtures.items()}
    assert names["fixated_matrix_lr"][0] == "fixation"
    assert names["repeated_proposals"][0] == "repetition"
    assert names["crashing_capacity"][0] == "crashes"
    assert names["stagnating_near_ties"][0] == "noise"


def test_builtin_session_produces_a_validated_mechanism(fixtures: dict[str, TraceFixture]) -> None:
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [fixtures["repeated_proposals"]])
    result = run_session(context, builtin_responder(context, seed=1))
    assert result.status == "produced", result.reason
    assert [r["round"] for r in result.rounds] == ["explore", "critique", "specify", "generate"]
    assert all(r["error"] is None and r["seconds"] >= 0 for r in result.rounds)
    assert BUILTIN_LABEL in result.rounds[0]["parsed"]["diagnosis"]
    assert "fixation" in result.rounds[0]["parsed"]["diagnosis"]
    assert "MATRIX_LR" in result.rounds[0]["prompt"] and "def run_iteration" in result.rounds[0]["prompt"]
    assert result.spec is not None and result.spec["name"] == "parameter_bandit"
    assert result.ladder is not None and result.ladder.ok
    assert [t["trace"] for t in result.ladder.dry_run_report["traces"]] == ["this_run", "repeated_proposals"]
    json.dumps(result.artifacts())


def test_builtin_skips_active_mechanisms(fixtures: dict[str, TraceFixture]) -> None:
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [], active=["parameter_bandit"])
    result = run_session(context, builtin_responder(context, seed=1))
    assert result.status == "produced" and result.spec is not None
    assert result.spec["name"] != "parameter_bandit"


def _garbage_first(good: Callable[[str, str], str], bad_rounds: dict[str, int]) -> Callable[[str, str], str]:
    def respond(round_name: str, prompt: str) -> str:
        if bad_rounds.get(round_name, 0) > 0:
            bad_rounds[round_name] -= 1
            return "I think the answer is: tabu!" if round_name != "generate" else \
                "```python\nclass TabuSearch:\n    def filter(self, proposal, state):\n        return None\n```"
        return good(round_name, prompt)
    return respond


def test_repair_round_is_used_after_garbage(fixtures: dict[str, TraceFixture]) -> None:
    repeated = fixtures["repeated_proposals"]
    context = _context(repeated, [])
    respond = _garbage_first(builtin_responder(context, seed=0), {"explore": 1, "generate": 1})
    result = run_session(context, respond)
    assert result.status == "produced", result.reason
    assert result.repair_rounds == 2
    explore_attempts = [r for r in result.rounds if r["round"] == "explore"]
    assert explore_attempts[0]["error"] == "the reply contains no JSON object"
    assert "the reply contains no JSON object" in explore_attempts[1]["prompt"]
    generate_attempts = [r for r in result.rounds if r["round"] == "generate"]
    assert "validation ladder failed at step 'static'" in str(generate_attempts[0]["error"])


def test_always_garbage_fails_with_a_reason(fixtures: dict[str, TraceFixture]) -> None:
    context = _context(fixtures["repeated_proposals"], [])
    result = run_session(context, lambda round_name, prompt: "no idea", max_repairs=2)
    assert result.status == "failed"
    assert result.reason == "explore failed after 2 repair rounds: the reply contains no JSON object"
    assert len(result.rounds) == 3 and result.spec is None and result.code is None


def test_inert_code_fails_validation_with_the_ladder_detail(fixtures: dict[str, TraceFixture]) -> None:
    context = _context(fixtures["repeated_proposals"], [])
    builtin = builtin_responder(context, seed=0)

    def inert_generate(round_name: str, prompt: str) -> str:
        if round_name == "generate":
            return "```python\nclass TabuSearch:\n    def on_result(self, record, state):\n        return None\n" \
                   "    def filter(self, proposal, state):\n        return None\n" \
                   "    def prompt_sections(self, state):\n        return None\n```"
        return builtin(round_name, prompt)

    result = run_session(context, inert_generate, max_repairs=1)
    assert result.status == "failed"
    assert "step 'dry_run'" in result.reason and "inert" in result.reason


def test_extract_code_accepts_fenced_and_bare_code() -> None:
    assert extract_code("Here:\n```python\nclass A:\n    pass\n```\nDone") == "class A:\n    pass\n"
    assert extract_code("class A:\n    pass") == "class A:\n    pass\n"


def test_a_structured_responder_gets_each_rounds_schema(fixtures: dict[str, TraceFixture]) -> None:
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [fixtures["repeated_proposals"]])
    context.structured_output = True
    builtin = builtin_responder(context, seed=1)
    schemas: dict[str, dict | None] = {}

    def respond(round_name: str, prompt: str, schema: dict | None, attempt: int) -> str:
        schemas[round_name] = schema
        return builtin(round_name, prompt)

    result = run_session(context, respond)
    assert result.status == "produced", result.reason
    explore = next(r["parsed"] for r in result.rounds if r["round"] == "explore")
    names = [c["name"] for c in explore["candidates"]]
    critique = schemas["critique"]
    assert critique is not None and critique["properties"]["selected"] == {"enum": names}  # only a real candidate
    assert schemas["explore"] is not None and schemas["specify"] is not None
    assert schemas["specify"]["properties"]["hooks"]["items"]["enum"][0] == "on_result"
    assert schemas["generate"] is None  # code, not JSON
    generate = next(r["prompt"] for r in result.rounds if r["round"] == "generate")
    spec = result.spec or {}
    assert f"class {spec['class_name']}:" in generate  # the class to fill in, with exactly the spec's hooks
    assert all(f"    def {hook}(self" in generate for hook in spec["hooks"])


def test_a_structured_session_sends_the_explore_round_the_traces_evidence_choices_and_patterns(
        fixtures: dict[str, TraceFixture]) -> None:
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [])
    context.structured_output = True
    builtin = builtin_responder(context, seed=1)
    sent: dict[str, tuple[str, dict[str, object] | None]] = {}

    def respond(round_name: str, prompt: str, schema: dict[str, object] | None, attempt: int) -> str:
        sent.setdefault(round_name, (prompt, schema))
        return builtin(round_name, prompt)

    assert run_session(context, respond).status == "produced"
    prompt, schema = sent["explore"]
    assert schema is not None
    rows = schema["properties"]["evidence"]["items"]["anyOf"]  # type: ignore[index]
    pairs = [(row["properties"]["iteration"]["const"], row["properties"]["parameter"]["enum"]) for row in rows]
    assert pairs == [(r["iteration"], sorted(r["changes"])) for r in fixated.trace
                     if r["kind"] == "proposal" and r["changes"]]
    assert "## Patterns counted in the trace" in prompt and "- fixation: " in prompt
