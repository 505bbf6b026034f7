"""The four-round research session: built-in responder end to end, repair rounds, failure status."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from mechanisms.research.prompts import MAX_MODULE_LINES, REPLY_TOKENS
from mechanisms.research.session import (
    BUILTIN_LABEL,
    CutOffReply,
    ResearchContext,
    builtin_responder,
    diagnose,
    extract_code,
    run_session,
    spec_matching_code,
)
from mechanisms.validation.ladder import TraceFixture, recorded_fixtures
from mechanisms.validation.static_check import static_check


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
    # Its one hook is the spec's now (spec_matching_code), and a filter that never rejects changes nothing.
    assert str(generate_attempts[0]["error"]).startswith("validation ladder failed at step 'dry_run': inert")


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


def test_the_spec_says_what_the_generated_code_defines_its_class_and_hooks(
        fixtures: dict[str, TraceFixture]) -> None:
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [fixtures["repeated_proposals"]])
    builtin = builtin_responder(context, seed=1)

    def respond(round_name: str, prompt: str) -> str:
        reply = builtin(round_name, prompt)
        if round_name != "generate":
            return reply
        # A small model's code: its own class name, and a propose() beside the spec's three hooks.
        code = extract_code(reply).replace("class ParameterBandit", "class BanditOfTheModel")
        return f"```python\n{code}\n    def propose(self, state):\n        return None\n```"

    result = run_session(context, respond)
    assert result.status == "produced", result.reason
    assert result.spec is not None and result.spec["name"] == "parameter_bandit"
    assert result.spec["class_name"] == "BanditOfTheModel"
    assert sorted(result.spec["hooks"]) == ["on_result", "prompt_sections", "propose", "restrict"]
    assert result.spec["matched_to_code"] == (
        "the spec now says what the generated code defines: class_name 'ParameterBandit' -> 'BanditOfTheModel'; "
        "hooks ['on_result', 'restrict', 'prompt_sections'] -> ['on_result', 'prompt_sections', 'restrict', 'propose']")
    assert result.repair_rounds == 0


def test_code_without_one_parsable_class_leaves_the_spec_to_the_static_check() -> None:
    spec = {"name": "n", "class_name": "N", "hooks": ["filter"]}
    assert spec_matching_code(spec, "class A:\n    def filter(self, proposal, state):\n        return None\n"
                                    "class B:\n    pass\n") is spec
    assert spec_matching_code(spec, "class N:\n    def filter(self, proposal, state):\n        return 1 if x\n") is spec
    assert spec_matching_code(spec, "class N:\n    def helper(self):\n        return None\n") is spec  # no hook at all


def test_a_reply_cut_off_at_the_reply_limit_is_refused_as_cut_off_and_asked_shorter(
        fixtures: dict[str, TraceFixture]) -> None:
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [fixtures["repeated_proposals"]])
    builtin = builtin_responder(context, seed=1)
    generated = 0

    def respond(round_name: str, prompt: str) -> str:
        nonlocal generated
        reply = builtin(round_name, prompt)
        if round_name == "generate" and not generated:
            generated += 1
            return CutOffReply(reply[: len(reply) // 2] + '"an unfinished string')  # no closing fence either
        return reply

    result = run_session(context, respond)
    assert result.status == "produced", result.reason
    refused, repaired = [r for r in result.rounds if r["round"] == "generate"][:2]
    assert refused["error"] is not None and "syntax error" in refused["error"]
    assert refused["error"].endswith(
        f". Your reply was cut off at the reply limit ({REPLY_TOKENS['generate']} tokens) before the module ended: "
        f"write a shorter module, at most {MAX_MODULE_LINES} lines, with no docstrings or comments.")
    assert f"at most {MAX_MODULE_LINES} lines" in repaired["prompt"].split("YOUR PREVIOUS REPLY")[1]


def test_an_unclosed_fence_is_code_cut_off_so_its_syntax_error_names_the_real_line() -> None:
    code = extract_code("Here it is:\n```python\nclass A:\n    def filter(self, proposal, state):\n        return 'x")
    assert code.startswith("class A:")
    assert static_check(code, "A") == ["line 3: syntax error: unterminated string literal (detected at line 3) "
                                       "in `return 'x`"]


def test_the_session_tells_its_progress_as_it_goes(fixtures: dict[str, TraceFixture]) -> None:
    """Each ask's start and end and each ladder step, in order, for the run page's live Level 2 panel."""
    events: list[dict[str, object]] = []
    fixated = fixtures["fixated_matrix_lr"]
    context = _context(fixated, [fixtures["repeated_proposals"]])
    context.on_progress = events.append
    result = run_session(context, _garbage_first(builtin_responder(context, seed=1), {"critique": 1}))
    assert result.status == "produced", result.reason
    rounds = [(e["event"], e["round"], e["attempt"]) for e in events if e["event"] != "ladder"]
    assert rounds == [("round", "explore", 0), ("round_end", "explore", 0),
                      ("round", "critique", 0), ("round_end", "critique", 0),  # refused: a repair round follows
                      ("round", "critique", 1), ("round_end", "critique", 1),
                      ("round", "specify", 0), ("round_end", "specify", 0),
                      ("round", "generate", 0), ("round_end", "generate", 0)]
    ends = [e for e in events if e["event"] == "round_end"]
    assert ends[1]["error"] and all(e["error"] is None for e in ends[2:])
    ladder = [(e["step"], e.get("ok")) for e in events if e["event"] == "ladder"]
    assert ladder == [("spec", None), ("spec", True), ("static", None), ("static", True),
                      ("import", None), ("import", True), ("dry_run", None), ("dry_run", True)]
    generate_start = events.index({"event": "round", "round": "generate", "attempt": 0})
    assert all(events.index(e) > generate_start for e in events if e["event"] == "ladder")
