"""The Level 2 research session as a pure function over a responder, and the built-in responder.

``run_session`` drives the four rounds (explore, critique, specify, generate). Each reply is
parsed and checked; a failed step gets at most ``max_repairs`` repair rounds carrying the error
text; the session ends with an explicit status: "produced" (spec + code + a passing ladder
report) or "failed" (with the reason). Nothing falls back silently.

``builtin_responder`` answers the same prompts without an LLM or network: it diagnoses the trace
(repeated changes, fixation on one parameter, stagnation, crashes, noisy near-ties) and drafts
the fitting mechanism from the project's catalogue. It is labelled as what it is.
"""

from __future__ import annotations

import ast
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from mechanisms.catalogue import CatalogueEntry, catalogue_entries
from mechanisms.labels import BUILTIN_LABEL
from mechanisms.protocol import State, TraceRecord, protocol_description
from mechanisms.research import prompts as research_prompts
from mechanisms.research.artifact_checks import critique_defect, explore_defect
from mechanisms.text import without_nul
from mechanisms.validation.ladder import (
    LadderReport,
    TraceFixture,
    check_spec,
    class_hooks,
    default_fixtures,
    validate_mechanism,
)

STAGNATION_WINDOW = 6
FIXATION_WINDOW = 8

# respond(round_name, prompt) -> reply; with ResearchContext.structured_output also given the round's
# reply schema (None for the generate round), for endpoints that constrain decoding, and the attempt
# (0 = first ask, 1.. = repairs), so that a repair can be sampled differently from the refused reply.
Responder = Callable[..., str]
Validator = Callable[..., LadderReport]


@dataclass
class ResearchContext:
    trace: list[TraceRecord]
    state: State
    runner_source: str = ""
    level15_history: list[Any] = field(default_factory=list)
    active_mechanisms: list[str] = field(default_factory=list)
    # Traces for the ladder's dry run besides this run's own; None = the recorded fixtures.
    fixtures: list[TraceFixture] | None = None
    time_limit_per_call: float = 1.0
    # LLM sessions: a well-formed reply that echoes the template, scores all candidates alike or cites
    # nothing from the trace is repaired like a malformed one (mechanisms.research.artifact_checks).
    check_artifacts: bool = False
    # The responder takes each JSON round's reply schema (research_prompts.round_schema) and the attempt number.
    structured_output: bool = False
    # Hears the session as it goes: {"event": "round", "round", "attempt"} when an ask starts, "round_end"
    # (with seconds and error) when its reply was judged, "ladder" (a validation step starting or ending).
    on_progress: Callable[[dict[str, Any]], None] | None = None


class RoundRecord(TypedDict):
    round: str
    attempt: int  # 0 = first ask, 1.. = repair rounds
    prompt: str
    reply: str
    parsed: Any
    error: str | None
    seconds: float


@dataclass
class SessionResult:
    status: str  # "produced" | "failed"
    reason: str
    rounds: list[RoundRecord] = field(default_factory=list)
    spec: dict[str, Any] | None = None
    code: str | None = None
    ladder: LadderReport | None = None

    @property
    def repair_rounds(self) -> int:
        return sum(1 for r in self.rounds if r["attempt"] > 0)

    def artifacts(self) -> dict[str, Any]:
        """The session's artifacts by round (what the review page shows), JSON-serialisable."""
        parsed = {r["round"]: r["parsed"] for r in self.rounds if r["error"] is None}
        return {**parsed, "spec": self.spec, "code": self.code,
                "ladder": self.ladder.to_json() if self.ladder else None}


class _StepError(ValueError):
    pass


class CutOffReply(str):
    """A reply that stopped at the endpoint's reply limit (finish_reason "length"), not where the model ended it.

    A small model wrote a 190-line module into a 2,000-token limit; the refusal said only "unterminated string
    literal at line 190", so its repair was as long and was cut off again. The responder marks such a reply,
    and a refusal of it says that it was cut off and must be shorter.
    """


# -- reply parsing -----------------------------------------------------------------------------------


def extract_json(reply: str) -> dict[str, Any]:
    """The first JSON object in a reply (a ```json fence or surrounding prose is tolerated)."""
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", reply, re.DOTALL)
    text = fenced.group(1) if fenced else reply
    start = text.find("{")
    if start < 0:
        raise _StepError("the reply contains no JSON object")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError as exc:
        raise _StepError(f"the reply is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _StepError("the reply must be a JSON object")
    return dict(without_nul(value))  # a JSON \u0000 escape decodes to a NUL, which PostgreSQL cannot store


def extract_code(reply: str) -> str:
    """The Python source in a reply: the first ```python fence, any fence, or the whole reply."""
    # An opening fence with no closing one is a reply cut off mid-module: its code runs to the end.
    fenced = re.search(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", reply, re.DOTALL)
    code = fenced.group(1) if fenced else reply
    if "class " not in code:
        raise _StepError("the reply contains no Python class")
    return code.strip() + "\n"


# The prompt asks for 3 (one per field); two different ideas still give the critique a real choice, and a
# small model that wrote one idea twice among three lost the whole session when three were required.
MIN_DISTINCT_CANDIDATES = 2


def _parse_explore(reply: str) -> dict[str, Any]:
    value = extract_json(reply)
    candidates = value.get("candidates")
    if not isinstance(value.get("diagnosis"), str) or not value["diagnosis"].strip():
        raise _StepError("'diagnosis' must be a non-empty string")
    evidence = value.get("evidence", [])
    if not (isinstance(evidence, list) and all(isinstance(row, dict) for row in evidence)):
        raise _StepError("'evidence' must be a list of objects with the keys 'iteration', 'parameter', 'observation'")
    if not isinstance(candidates, list) or not 3 <= len(candidates) <= 4:
        raise _StepError("'candidates' must be a list of 3 or 4 mechanisms")
    for candidate in candidates:
        if not (isinstance(candidate, dict) and isinstance(candidate.get("name"), str)
                and isinstance(candidate.get("idea"), str)):
            raise _StepError("each candidate needs a 'name' and an 'idea' (strings)")
    value["candidates"], notes = distinct_candidates(candidates)
    if len(value["candidates"]) < MIN_DISTINCT_CANDIDATES:
        raise _StepError("the candidates repeat the same idea: give each field of the list its own idea")
    if notes:
        value["notes"] = notes
    return value


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def distinct_candidates(candidates: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The candidates with one name each, and notes saying what was changed.

    A small model often gave several different ideas one name (four "metaheuristic_search"s), and kept
    doing so when asked to repair it. The names only label the ideas, so a repeated name is made unique
    from the candidate's field (or a number); a candidate whose idea repeats an earlier one's is dropped.
    """
    kept: list[dict[str, Any]] = []
    notes: list[str] = []
    ideas: set[str] = set()
    for candidate in candidates:
        idea = " ".join(candidate["idea"].lower().split())
        if idea in ideas:
            notes.append(f"dropped a second {candidate['name']!r}: its idea repeats an earlier candidate's")
            continue
        ideas.add(idea)
        names = {c["name"] for c in kept}
        name = candidate["name"]
        if name in names or not name.strip():
            base = _identifier(name) or "mechanism"
            options = [f"{base}_{_identifier(str(candidate.get('field', '')))[:20]}".rstrip("_")]
            options += [f"{base}_{number}" for number in range(2, 2 + len(candidates))]
            name = next(option for option in options if option not in names and option != base)
            notes.append(f"renamed a repeated name {candidate['name']!r} to {name!r}")
        kept.append({**candidate, "name": name})
    return kept, notes


def _parse_critique(reply: str, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    value = extract_json(reply)
    names = [c["name"] for c in candidates]
    if value.get("selected") not in names:
        raise _StepError(f"'selected' must be one of {names}")
    if not isinstance(value.get("scores"), list):
        raise _StepError("'scores' must be a list of {name, score, reason}")
    return value


def _checked(value: dict[str, Any], defect: str | None) -> dict[str, Any]:
    if defect:
        raise _StepError(defect)
    return value


def _parse_spec(reply: str) -> dict[str, Any]:
    value = extract_json(reply)
    class_name = value.get("class_name")
    if not (isinstance(class_name, str) and class_name.isidentifier()) and isinstance(value.get("name"), str):
        value["class_name"] = research_prompts.class_name_for(value["name"])  # not asked for: derived
    spec, problems = check_spec(value)
    if spec is None:
        raise _StepError("; ".join(problems))
    return spec


def spec_matching_code(spec: dict[str, Any], code: str) -> dict[str, Any]:
    """The spec with the class name and hooks that the generated code has, and a note saying what changed.

    Both are facts of the code, which is what runs and what a reviewer reads; a small model that wrote a
    propose() beside the spec's three hooks kept it through both repairs, and the session was lost on a
    disagreement the spec could simply state. Code that cannot be parsed is left to the static check.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return spec
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    if len(classes) != 1:
        return spec  # none or several: the static check says which
    notes = []
    if classes[0].name != spec["class_name"]:
        notes.append(f"class_name {spec['class_name']!r} -> {classes[0].name!r}")
        spec = {**spec, "class_name": classes[0].name}
    hooks = class_hooks(classes[0])
    if hooks and set(hooks) != set(spec["hooks"]):
        notes.append(f"hooks {spec['hooks']} -> {hooks}")
        spec = {**spec, "hooks": hooks}
    if notes:
        spec["matched_to_code"] = "the spec now says what the generated code defines: " + "; ".join(notes)
    return spec


# -- the session ---------------------------------------------------------------------------------------


def run_session(context: ResearchContext, respond: Responder, validate: Validator = validate_mechanism,
                max_repairs: int = 2) -> SessionResult:
    """Run explore -> critique -> specify -> generate (+ ladder) with bounded repair rounds."""
    result = SessionResult(status="failed", reason="")
    protocol = protocol_description()
    tell = context.on_progress or (lambda event: None)

    def judged(record: RoundRecord) -> None:
        result.rounds.append(record)
        tell({"event": "round_end", "round": record["round"], "attempt": record["attempt"],
              "seconds": record["seconds"], "error": record["error"]})

    def ask(round_name: str, prompt: str, parse: Callable[[str], Any], schema: dict[str, Any] | None = None) -> Any:
        current = prompt
        for attempt in range(max_repairs + 1):
            tell({"event": "round", "round": round_name, "attempt": attempt})
            started = time.monotonic()
            reply = ""
            try:
                reply = respond(round_name, current, schema, attempt) if context.structured_output else respond(
                    round_name, current)
                parsed = parse(reply)
            except _StepError as error:
                defect = str(error)
                if isinstance(reply, CutOffReply):
                    defect += research_prompts.cut_off_note(round_name)
                judged({"round": round_name, "attempt": attempt, "prompt": current, "reply": reply,
                        "parsed": None, "error": defect, "seconds": round(time.monotonic() - started, 4)})
                current = research_prompts.repair_prompt(round_name, prompt, reply, defect)
                continue
            judged({"round": round_name, "attempt": attempt, "prompt": current, "reply": reply,
                    "parsed": parsed, "error": None, "seconds": round(time.monotonic() - started, 4)})
            return parsed
        raise _StepError(f"{round_name} failed after {max_repairs} repair rounds: {result.rounds[-1]['error']}")

    traces: list[TraceFixture | list[TraceRecord]] = list(default_fixtures() if context.fixtures is None
                                                          else context.fixtures)
    if context.trace:
        traces.insert(0, TraceFixture("this_run", context.trace, context.state))

    spec: dict[str, Any] = {}  # the specify round's, then matched to the generated code's class and hooks

    def generate_and_validate(reply: str) -> str:
        nonlocal spec
        code = extract_code(reply)
        spec = spec_matching_code(spec, code)
        watch = {"on_step": lambda step: tell({"event": "ladder", **step})} if context.on_progress else {}
        report = validate(spec, code, traces, time_limit_per_call=context.time_limit_per_call, **watch)
        result.ladder = report
        failed = report.failed_step
        if failed is not None:
            raise _StepError(f"validation ladder failed at step '{failed['step']}': {failed['detail']}")
        return code

    def parse_explore(reply: str) -> dict[str, Any]:
        value = _parse_explore(reply)
        return _checked(value, explore_defect(value, context.trace) if context.check_artifacts else None)

    def parse_critique(reply: str) -> dict[str, Any]:
        value = _parse_critique(reply, explore["candidates"])
        return _checked(value, critique_defect(value) if context.check_artifacts else None)

    try:
        noise_sd = context.state.get("baseline", {}).get("noise_sd")
        symptoms = diagnose(context.trace, noise_sd)
        patterns = [f"{symptom.name}: {symptom.evidence}" for symptom in symptoms]
        fields = research_prompts.candidate_fields([symptom.name for symptom in symptoms])
        explore = ask("explore", research_prompts.explore_prompt(
            protocol, context.runner_source, context.trace, context.level15_history, context.active_mechanisms,
            patterns=patterns, fields=fields), parse_explore,
            research_prompts.round_schema("explore", trace=context.trace, fields=fields))
        critique = ask("critique", research_prompts.critique_prompt(explore), parse_critique,
                       research_prompts.round_schema("critique", explore["candidates"]))
        selected = next(c for c in explore["candidates"] if c["name"] == critique["selected"])
        spec = ask("specify", research_prompts.specify_prompt(explore, selected), _parse_spec,
                   research_prompts.round_schema("specify"))
        code = ask("generate", research_prompts.generate_prompt(protocol, spec), generate_and_validate)
    except _StepError as error:
        result.reason = str(error)
        return result
    result.status, result.spec, result.code = "produced", spec, code
    result.reason = f"mechanism {spec['name']!r} passed the validation ladder"
    return result


# -- the built-in responder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Symptom:
    name: str  # "repetition" | "fixation" | "stagnation" | "crashes" | "noise"
    strength: float  # 0..1
    evidence: str


def diagnose(trace: Sequence[TraceRecord], noise_sd: float | None) -> list[Symptom]:
    """The search's failure modes visible in a trace, strongest first."""
    proposals = [r for r in trace if r.get("kind") == "proposal"]
    symptoms: list[Symptom] = []
    seen: set[str] = set()
    repeats = []
    for record in proposals:
        for name, change in record.get("changes", {}).items():
            move = f"{name}={json.dumps(change.get('new'), sort_keys=True)}"
            if move in seen:
                repeats.append(f"{move} (iteration {record['iteration']})")
            seen.add(move)
    if repeats:
        symptoms.append(Symptom("repetition", min(1.0, len(repeats) / max(1, len(proposals)) * 3),
                                f"{len(repeats)} repeated moves: {', '.join(repeats[:5])}"))
    recent = [name for r in proposals[-FIXATION_WINDOW:] for name in r.get("changes", {})]
    if recent:
        top, count = Counter(recent).most_common(1)[0]
        share = count / len(proposals[-FIXATION_WINDOW:])
        if share >= 0.5:
            symptoms.append(Symptom("fixation", share, f"{count} of the last {len(proposals[-FIXATION_WINDOW:])} "
                                                       f"proposals changed {top}"))
    since_keep = 0
    for record in reversed(proposals):
        if record.get("status") == "keep":
            break
        since_keep += 1
    if since_keep >= STAGNATION_WINDOW:
        symptoms.append(Symptom("stagnation", min(1.0, since_keep / (2 * STAGNATION_WINDOW)),
                                f"no kept change in the last {since_keep} proposals"))
    crashes = [r for r in proposals if r.get("status") == "crash"]
    if crashes:
        symptoms.append(Symptom("crashes", min(1.0, 2 * len(crashes) / len(proposals)),
                                f"{len(crashes)} of {len(proposals)} proposals crashed "
                                f"({', '.join(sorted({str(r.get('failure_class')) for r in crashes}))})"))
    if noise_sd:
        best: float | None = None
        near_ties = []
        for record in trace:
            value = record.get("val_bpb")
            if value is None or record.get("status") not in ("baseline", "keep"):
                continue
            if best is not None and record.get("status") == "keep" and best - value < noise_sd:
                near_ties.append(f"iteration {record['iteration']} (gain {best - value:.4f})")
            best = value if best is None else min(best, value)
        if near_ties:
            symptoms.append(Symptom("noise", min(1.0, len(near_ties) / 2),
                                    f"{len(near_ties)} keeps gained less than the noise sd {noise_sd:g}: "
                                    + ", ".join(near_ties[:5])))
    return sorted(symptoms, key=lambda s: -s.strength)


def _rank(entries: list[CatalogueEntry], symptoms: list[Symptom], rng: random.Random) -> list[tuple[float, str]]:
    strength = {s.name: s.strength for s in symptoms}
    # The random tie-breaker keeps equally fitting mechanisms from always winning in schema order.
    scored = [(sum(strength.get(d, 0.0) for d in entry.diagnosis), rng.random(), entry.name) for entry in entries]
    scored.sort(reverse=True)
    return [(score, name) for score, _, name in scored]


def builtin_responder(context: ResearchContext, seed: int = 0) -> Responder:
    """A responder that answers each round from the trace diagnosis and the catalogue (no LLM)."""
    symptoms = diagnose(context.trace, context.state.get("baseline", {}).get("noise_sd"))
    entries = {e.name: e for e in catalogue_entries()}
    ranking = _rank(list(entries.values()), symptoms, random.Random(seed))
    available = [name for _, name in ranking if name not in context.active_mechanisms]
    chosen = entries[available[0]] if available else None
    diagnosis_text = "; ".join(f"{s.name}: {s.evidence}" for s in symptoms) or "no clear failure mode"

    def idea(name: str) -> str:
        active = " (already active in this run)" if name in context.active_mechanisms else ""
        return entries[name].spec["expected_effect"] + active

    def respond(round_name: str, prompt: str) -> str:
        if chosen is None:
            return "The built-in catalogue has no mechanism left that is not already active."
        if round_name == "explore":
            return json.dumps({"diagnosis": f"[{BUILTIN_LABEL}] {diagnosis_text}", "candidates": [
                {"name": name, "field": entries[name].spec["rationale"].split(":")[0],
                 "idea": idea(name), "hooks": entries[name].spec["hooks"]}
                for _, name in ranking]})
        if round_name == "critique":
            return json.dumps({"scores": [
                {"name": name, "score": round(min(10.0, 10 * score), 1),
                 "reason": f"answers {', '.join(entries[name].diagnosis)}; observed: "
                           f"{', '.join(s.name for s in symptoms if s.name in entries[name].diagnosis) or 'none'}"}
                for score, name in ranking], "selected": chosen.name})
        if round_name == "specify":
            return json.dumps(chosen.spec)
        return f"```python\n{chosen.code}```\n"

    return respond
