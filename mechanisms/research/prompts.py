"""Prompts of the four-round Level 2 research session (explore, critique, specify, generate).

Each prompt states the exact reply format, because every reply is parsed and checked; a reply
that fails gets one of the bounded repair prompts below with the error text.

Every prompt fits the model's context window by construction (mechanisms.context_budget): the
runner is given as a summary of its modules and public functions rather than its whole source
(about 15K tokens), the trace as compact records cut to the latest that fit, and each round keeps
room for its reply and for one repair prompt quoting that reply. Reply formats are described key
by key instead of as a JSON skeleton, which small models echo back verbatim; where the endpoint
constrains decoding to a JSON schema, each JSON round's reply is also constrained by its schema below
(critique: the selected name is one of the candidates'; specify: hooks from the protocol, identifiers).
The generate round is given the class to fill in: its name, exactly the spec's hooks with their
signatures and what each must return, so the code matches the spec by construction.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from mechanisms.context_budget import (
    BYTES_PER_TOKEN,
    DEFAULT_CONTEXT_TOKENS,
    TEMPLATE_OVERHEAD_TOKENS,
    estimate_tokens,
    fit_rows,
)
from mechanisms.protocol import (
    ALLOWED_IMPORTS,
    HOOK_NAMES,
    BaselineView,
    BestView,
    Proposal,
    Result,
    SearchParam,
    State,
    TraceRecord,
)
from mechanisms.text import words_unquoted

ROUNDS = ("explore", "critique", "specify", "generate")

# No class name is asked for: it is derived from the name (class_name_for). Shown "PascalCaseIdentifier" as
# the class name's format, a small model wrote exactly that, then named its class after the idea.
SPEC_FORMAT = (
    '{"name": "snake_case_identifier",\n'
    f' "hooks": [1 to 3 of {json.dumps(list(HOOK_NAMES))}, exactly the methods the class defines],\n'
    ' "rationale": "why this mechanism fits the observed failure mode",\n'
    ' "state_kept": "what the mechanism remembers (rebuilt from on_result on replay)",\n'
    ' "expected_effect": "which decisions it will change, and when"}'
)


# Tokens kept free in each round: for its reply, and for the repair prompt that quotes that reply.
REPLY_TOKENS = {"explore": 1200, "critique": 700, "specify": 700, "generate": 2000}
REPAIR_ROOM_TOKENS = 1200
SYSTEM_TOKENS = 100  # the research system prompt (runs.engine.level2.RESEARCH_SYSTEM) and its wrapping
RUNNER_SUMMARY_TOKENS = 1000
LEVEL15_TOKENS = 500
# Repairs are sampled at this temperature (first asks at the endpoint's default), so a repair is a new reply.
REPAIR_TEMPERATURE = 0.7
# A mechanism this long fits the generate round's reply limit (about 10 tokens a line) with room to spare.
MAX_MODULE_LINES = 80
TEXT_FIELD_CHARS = 600  # one diagnosis, idea or reason as quoted back to the model in a later round


_SHORT = {"type": "string", "maxLength": 60}
# One to three hooks: a mechanism that does one thing well is also code a small model gets right; a spec
# listing every hook mostly produced classes that defined only some of them (static check refused).
MAX_HOOKS = 3
_HOOK_LIST = {"type": "array", "items": {"enum": list(HOOK_NAMES)}, "minItems": 1, "maxItems": MAX_HOOKS,
              "uniqueItems": True}


# Evidence rows the explore reply starts with: an iteration of the trace, a parameter it changed, what was seen.
MAX_EVIDENCE = 3
EVIDENCE_TRACE_ROWS = 60  # the latest proposals offered as evidence (bounds the decoding grammar's size)


def trace_changes(trace: list[TraceRecord]) -> dict[int, list[str]]:
    """The parameters each proposal of the trace changed, by iteration (the latest EVIDENCE_TRACE_ROWS)."""
    changed = {int(r["iteration"]): sorted(r.get("changes") or {}) for r in trace
               if r.get("kind") == "proposal" and isinstance(r.get("iteration"), int) and r.get("changes")}
    return dict(sorted(changed.items())[-EVIDENCE_TRACE_ROWS:])


# Fields an explore candidate comes from: what each offers this kind of search, and the trace symptoms
# (research.session.diagnose) it answers. Asked for "3 or 4 different mechanisms", a small model wrote one
# candidate and copied it three times, word for word, through both repairs; given a different field for
# each, every candidate starts differently.
CANDIDATE_FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "multi-armed bandits": ("share the tries among the parameters by what each has gained", frozenset({"fixation"})),
    "statistics": ("tell a real gain from measurement noise before trusting it", frozenset({"noise"})),
    "design of experiments": ("try the untried parameters systematically", frozenset({"fixation", "stagnation"})),
    "tabu search": ("forbid moves that were tried recently", frozenset({"repetition"})),
    "trust regions": ("take bigger steps after gains and smaller ones after losses", frozenset({"stagnation"})),
    "constraint learning": ("learn which values crash or fail and stay away from them", frozenset({"crashes"})),
    "coordinate descent": ("work through the parameters one at a time", frozenset({"repetition"})),
}
CANDIDATE_COUNT = 3


def candidate_fields(symptoms: list[str]) -> list[str]:
    """CANDIDATE_COUNT different fields for the explore round: those answering the run's symptoms (strongest
    first), then the general ones in CANDIDATE_FIELDS' order."""
    answering = [field for symptom in symptoms for field, (_, answers) in CANDIDATE_FIELDS.items()
                 if symptom in answers]
    return list(dict.fromkeys([*answering, *CANDIDATE_FIELDS]))[:CANDIDATE_COUNT]


def _fields_list(fields: list[str]) -> str:
    return "\n".join(f"  {number}. {field}: {CANDIDATE_FIELDS[field][0]}" if field in CANDIDATE_FIELDS
                     else f"  {number}. {field}" for number, field in enumerate(fields, 1))


def explore_schema(trace: list[TraceRecord] | None = None, fields: list[str] | None = None) -> dict[str, Any]:
    """The explore reply's JSON schema (for endpoints that constrain decoding to one).

    With a trace that changed something, the reply opens with 1-3 evidence rows, each an iteration of the
    trace and a parameter that iteration changed (one alternative per iteration): a small model wrote
    diagnoses that cited nothing the run did ("the search does not explore enough") and kept them through
    repairs; made to pick its evidence from the trace first, it writes the diagnosis after reading it.
    Left to pair them itself, it cited "iteration 2, WARMUP_RATIO" for a change made at iteration 5.
    Endpoints that do not constrain decoding are held to the same by mechanisms.research.artifact_checks.
    """
    candidate = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,40}$"},
                       "field": {"enum": fields} if fields else _SHORT,
                       "idea": {"type": "string"}, "hooks": _HOOK_LIST},
        "required": ["name", "field", "idea", "hooks"],
        "additionalProperties": False,
    }
    properties: dict[str, Any] = {}
    changes = trace_changes(trace or [])
    if changes:
        rows = [{
            "type": "object",
            "properties": {"iteration": {"const": iteration}, "parameter": {"enum": names},
                           "observation": {"type": "string"}},  # a maxLength here is a grammar rule per row
            "required": ["iteration", "parameter", "observation"],
            "additionalProperties": False,
        } for iteration, names in changes.items()]
        properties["evidence"] = {"type": "array", "items": {"anyOf": rows}, "minItems": 1, "maxItems": MAX_EVIDENCE}
    properties["diagnosis"] = {"type": "string"}
    properties["candidates"] = {"type": "array", "items": candidate, "minItems": len(fields) if fields else 3,
                                "maxItems": len(fields) if fields else 4}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def critique_schema(names: list[str]) -> dict[str, Any]:
    """The critique reply's JSON schema: one score per candidate, the selection one of their names."""
    score = {
        "type": "object",
        "properties": {"name": {"enum": names}, "score": {"type": "integer", "minimum": 0, "maximum": 10},
                       "reason": {"type": "string"}},
        "required": ["name", "score", "reason"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"scores": {"type": "array", "items": score, "minItems": len(names), "maxItems": len(names)},
                       "selected": {"enum": names}},
        "required": ["scores", "selected"],
        "additionalProperties": False,
    }


def spec_schema() -> dict[str, Any]:
    """The specification's JSON schema: identifiers where the ladder needs them, hooks of the protocol."""
    text = {"type": "string"}
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,40}$"},
                       "hooks": _HOOK_LIST, "rationale": text, "state_kept": text, "expected_effect": text},
        "required": ["name", "hooks", "rationale", "state_kept", "expected_effect"],
        "additionalProperties": False,
    }


def class_name_for(name: str) -> str:
    """The class a spec's mechanism defines: its snake_case name in CamelCase (tabu_filter -> TabuFilter)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or name


def round_schema(round_name: str, candidates: list[dict[str, Any]] | None = None,
                 trace: list[TraceRecord] | None = None, fields: list[str] | None = None) -> dict[str, Any] | None:
    """The JSON schema of a round's reply, or None (generate answers with code)."""
    if round_name == "explore":
        return explore_schema(trace, fields)
    if round_name == "critique":
        return critique_schema([str(c.get("name")) for c in candidates or []])
    if round_name == "specify":
        return spec_schema()
    return None


# What each hook receives and must return, as the generate round's class skeleton states it.
HOOK_SKELETON = {
    "on_result": ("record, state", "None",
                  "record is one finished iteration: record[\"changes\"] maps a parameter name to "
                  "{\"old\": v, \"new\": v}; record[\"val_bpb\"] may be None; update what self remembers"),
    "prompt_sections": ("state", "a list of strings (text for the proposer), or None", ""),
    "restrict": ("state", "a list of parameter names that may change now, or None (all may)", ""),
    "propose": ("state", '{"changes": {name: new_value}, "hypothesis": "why"}, or None (the LLM proposes)',
                'name is a parameter of state["search_space"]; new_value within its min/max or choices'),
    "filter": ("proposal, state", 'None (accept) or {"reject": "reason"} (the proposer is asked again)',
               'proposal["changes"] maps parameter names to new values'),
    "accept": ("result, state", 'None (no opinion) or {"keep": True or False, "reason": "why"}',
               'result["val_bpb"] and result["best_val_bpb"] may be None'),
}


def class_skeleton(class_name: str, hooks: list[str]) -> str:
    """The class to fill in: the spec's name and exactly its hooks, each with its signature and contract."""
    lines = ["import math", "", "", f"class {class_name}:", "    def __init__(self):",
             "        self.seen = []  # whatever the mechanism remembers, rebuilt by on_result", ""]
    for hook in [h for h in HOOK_NAMES if h in hooks]:
        args, returns, note = HOOK_SKELETON[hook]
        lines.append(f"    def {hook}(self, {args}):")
        if note:
            lines.append(f"        # {note}")
        lines.append(f"        # returns {returns}")
        lines.append("        ...")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def round_budget(round_name: str, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> int:
    """The most tokens a round's first prompt may take, leaving room for its reply and its repair."""
    return context_tokens - REPLY_TOKENS[round_name] - REPAIR_ROOM_TOKENS - SYSTEM_TOKENS - 2 * TEMPLATE_OVERHEAD_TOKENS


def _cut(text: Any, chars: int = TEXT_FIELD_CHARS) -> str:
    text = str(text)
    return text if len(text) <= chars else text[:chars] + " ..."


def _cut_bytes(text: str, budget_tokens: int) -> str:
    data = text.encode()
    room = max(0, budget_tokens) * BYTES_PER_TOKEN
    return text if len(data) <= room else data[:room].decode(errors="ignore") + "\n... (cut to fit the context window)"


def trace_rows(trace: list[TraceRecord]) -> list[str]:
    """One compact JSON record per iteration, in the shape hooks receive (without the full config)."""
    rows = []
    for record in trace:
        compact = {key: record.get(key) for key in ("iteration", "kind", "changes", "val_bpb", "status",
                                                    "failure_class", "proposal_source")}
        compact["hypothesis"] = _cut(record.get("hypothesis", ""), 80)
        rows.append(json.dumps(compact, sort_keys=False))
    return rows


def format_trace(trace: list[TraceRecord], budget_tokens: int = DEFAULT_CONTEXT_TOKENS) -> str:
    """The structured trace the model reasons over: the baseline and the latest records that fit."""
    return "\n".join(fit_rows([], trace_rows(trace), budget_tokens)) or "(no iterations yet)"


_SECTION = re.compile(r"^# ---- (.+?) ----\n", re.MULTILINE)


def summarize_runner(source: str, budget_tokens: int = RUNNER_SUMMARY_TOKENS) -> str:
    """What each runner module does and its public functions and classes, from docstrings and signatures.

    The model needs to know when its hooks run, not how the engine leases steps; the protocol holds the
    contract. Sections are the `# ---- path ----` blocks research_session.runner_source() joins.
    """
    parts = _SECTION.split(source)
    sections = list(zip(parts[1::2], parts[2::2], strict=True)) if len(parts) > 1 else [("runner", source)]
    lines: list[str] = []
    for name, text in sections:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        purpose = (ast.get_docstring(tree) or "").split("\n\n")[0]
        lines.append(f"{name}: {purpose}" if purpose else name)
        for node in tree.body:
            members = [(node, "- "), *((m, "  - ") for m in node.body)] if isinstance(node, ast.ClassDef) else [
                (node, "- ")]
            for member, indent in members:
                if not isinstance(member, ast.FunctionDef | ast.ClassDef) or member.name.startswith("_"):
                    continue
                doc = (ast.get_docstring(member) or "").split("\n")[0]
                if isinstance(member, ast.ClassDef):
                    lines.append(f"{indent}class {member.name}" + (f": {doc}" if doc else ""))
                elif doc or indent == "- ":  # undocumented methods are plumbing; functions show the module's API
                    args = ", ".join(a.arg for a in member.args.args if a.arg not in ("self", "cls"))
                    lines.append(f"{indent}def {member.name}({args})" + (f": {doc}" if doc else ""))
    return _cut_bytes("\n".join(lines), budget_tokens) if lines else "(not provided)"


_DIAGNOSIS_KEY = """- "diagnosis": a string: what goes wrong in THIS run, citing iteration numbers and parameter names
  from the trace above."""
_EVIDENCE_KEY = f"""- "evidence": a list of 1 to {MAX_EVIDENCE} observations from the trace above that show the problem;
  each is an object with the keys "iteration" (an iteration number of the trace), "parameter" (a
  parameter that iteration changed) and "observation" (what happened there: its val_bpb and status).
"""


def explore_prompt(protocol: str, runner_source: str, trace: list[TraceRecord], level15_history: list[Any],
                   active_mechanisms: list[str], context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                   patterns: list[str] | None = None, fields: list[str] | None = None) -> str:
    """The first round's request. `patterns` are failure patterns counted in the trace (repeated moves,
    fixation, stagnation, crashes), shown as leads to check rather than as the diagnosis; `fields` are the
    fields the candidates come from, one each (candidate_fields)."""
    fields = fields or candidate_fields([])
    history = [{key: (_cut(value, 200) if isinstance(value, str) else value) for key, value in cycle.items()}
               for cycle in level15_history[-4:]] if level15_history else []
    level15 = "\n".join(json.dumps(cycle) for cycle in history) or "(none)"
    parts = [f"""You are the mechanism researcher of an automated hyperparameter search (Level 2).
The inner loop proposes one change to a GPT training config per iteration, trains, and keeps the
change if val_bpb (lower is better) improved. Your job: find how the SEARCH ITSELF is failing in
this run, and invent search mechanisms that fix it, drawing on adjacent fields (optimisation,
metaheuristics, bandits, statistics, design of experiments, active learning, control).

{protocol}

## The runner that calls your mechanism (modules and functions)
{summarize_runner(runner_source)}

## Strategy level (1.5): the latest outer cycles
{_cut_bytes(level15, LEVEL15_TOKENS)}

## Mechanisms already active
{", ".join(active_mechanisms) or "(none)"}

Allowed imports: {", ".join(ALLOWED_IMPORTS)}.

## The run's trace, oldest first (one record per iteration)
""", "", f"""{_patterns_section(patterns)}
Reply with ONE JSON object and nothing else. Its keys, in this order:
{_EVIDENCE_KEY if trace_changes(trace) else ""}{_DIAGNOSIS_KEY}
- "candidates": a list of {len(fields)} mechanisms, one from each of these fields, in this order:
{_fields_list(fields)}
  Each is an object with the keys "name" (a snake_case identifier of its own), "field" (its field,
  as named in the list), "idea" (how that field's idea fixes what goes wrong in this run, one or two
  sentences) and "hooks" (a list of 1 to {MAX_HOOKS} hook names from
  {json.dumps(list(HOOK_NAMES))}: only the hooks the idea needs).
"""]
    room = round_budget("explore", context_tokens) - estimate_tokens("".join(parts))
    parts[1] = format_trace(trace, room)
    return "".join(parts)


def _patterns_section(patterns: list[str] | None) -> str:
    if not patterns:
        return ""
    lines = "\n".join(f"- {_cut(p, 300)}" for p in patterns[:5])
    return f"\n## Patterns counted in the trace (leads to check against it, not the diagnosis)\n{lines}\n"


def evidence_lines(explore: dict[str, Any]) -> str:
    """The explore reply's evidence rows as a later round is shown them ("" when it has none)."""
    evidence = explore.get("evidence")
    rows: list[Any] = evidence if isinstance(evidence, list) else []
    lines = [f"- iteration {row.get('iteration')}, {row.get('parameter')}: {_cut(row.get('observation', ''), 200)}"
             for row in rows[:MAX_EVIDENCE] if isinstance(row, dict)]
    return "Evidence:\n" + "\n".join(lines) + "\n" if lines else ""


def critique_prompt(explore: dict[str, Any]) -> str:
    candidates = [{key: _cut(value) if isinstance(value, str) else value for key, value in candidate.items()}
                  for candidate in explore["candidates"]]
    names = ", ".join(json.dumps(c.get("name")) for c in candidates)
    return f"""Critique the candidate mechanisms against the observed failure mode.

Diagnosis: {_cut(explore["diagnosis"])}
{evidence_lines(explore)}Candidates:
{json.dumps(candidates, indent=1)}

Score each candidate from 0 to 10 for: fixes the observed failure mode; changes decisions often
enough to matter; cannot make the search worse (bounded, deterministic given the trace); fits the
hooks. The candidates differ, so their scores should too. Select exactly one: the best.

Reply with ONE JSON object and nothing else. Its keys:
- "scores": a list with one object per candidate, with the keys "name" (one of {names}),
  "score" (a number from 0 to 10) and "reason" (one sentence).
- "selected": the name of the chosen candidate.
"""


def specify_prompt(explore: dict[str, Any], selected: dict[str, Any]) -> str:
    chosen = {key: _cut(value) if isinstance(value, str) else value for key, value in selected.items()}
    return f"""Write the specification of the selected mechanism.

Diagnosis: {_cut(explore["diagnosis"])}
Selected: {json.dumps(chosen, indent=1)}

Reply with ONE JSON object and nothing else, in this format:
{SPEC_FORMAT}
"""


def generate_prompt(protocol: str, spec: dict[str, Any]) -> str:
    shown = {key: _cut(value) if isinstance(value, str) else value for key, value in spec.items()}
    hooks = [h for h in spec.get("hooks", []) if h in HOOK_NAMES]
    class_name = str(spec.get("class_name"))
    return f"""Write the mechanism's code.

{protocol}

Specification:
{json.dumps(shown, indent=1)}

Rules: one module; only the allowed imports; exactly one top-level class named
{class_name!r} with a no-argument constructor, defining exactly the hooks {hooks} and no other
hook names (helper methods with other names are fine); everything it remembers must be rebuilt from
on_result records (or read from state["trace"]); return plain JSON values only.
state["best"]["val_bpb"] and a record's "val_bpb" may be None (before the baseline is measured, and
for crashed or invalid iterations): check for None before comparing numbers.
It will be dry-run on recorded traces and must change at least one decision there (return something
other than None from a deciding hook when its condition holds).
Keep the module short: at most {MAX_MODULE_LINES} lines, no docstrings, few comments (a longer reply is cut off).

Fill in this class (replace each ... with the body):
```python
{class_skeleton(class_name, hooks)}```

Reply with the complete Python module only, in one ```python fenced block.
"""


_RAISED_IN = re.compile(r"\b(" + "|".join(HOOK_NAMES) + r")\(\) exception")
_NAME_ERROR = re.compile(r"NameError: name '(\w+)' is not defined")
_ATTRIBUTE_ERROR = re.compile(r"AttributeError: '(\w+)' object has no attribute '(\w+)'")
# What the hooks' arguments and their parts are made of; an attribute error on one of these is not about the class.
_PLAIN_TYPES = {"list": "`item in values`, len(values), values.append(item), values.count(item)",
                "dict": "`key in values`, values.get(key), values.items(), values[key] = value",
                "str": "`part in text`, text.startswith(part), text.split()",
                "int": "arithmetic and comparisons", "float": "arithmetic and comparisons",
                "bool": "and, or, not", "tuple": "indexing and `item in values`",
                "set": "`item in values`, values.add(item)"}
_KEY_ERROR = re.compile(r"KeyError: '(\w+)'")
_HOOKS_MISMATCH = re.compile(r"the spec lists hooks (\[[^\]]*\]) but the class defines (\[[^\]]*\])")
_MUST_RETURN = re.compile(r"\b(" + "|".join(HOOK_NAMES) + r")\(\) must return")
_IMPORT_REFUSED = re.compile(r"import of '([\w.]+)' is not allowed")
_ARITY = re.compile(r"\b(" + "|".join(HOOK_NAMES) + r")\(\) takes \d+ positional parameters")
_CLASS_NAME = re.compile(r"the class is named '(\w+)' but the spec names '(\w+)'")
_CALL_REFUSED = re.compile(r"call to (\w+)\(\) is not allowed")
_DUNDER = re.compile(r"access to dunder attribute '(__\w+__)' is not allowed")
# The operator or builtin that calls each special method: ordinary code the static check lets through.
_INSTEAD_OF_DUNDER = {
    "__contains__": "`item in container` (or `item not in container`)",
    "__len__": "len(x)",
    "__getitem__": "x[key]",
    "__setitem__": "x[key] = value",
    "__iter__": "a for loop over x",
    "__eq__": "a == b",
    "__lt__": "a < b",
    "__add__": "a + b",
    "__class__": "isinstance(x, dict) (or list, str, int, float)",
    "__dict__": "a dict kept on self",
    "__name__": "a string constant",
}
_SYNTAX_ERROR = re.compile(r"line (\d+): syntax error: ([^`;\n]+?)(?: in `([^`\n]*)`|(?=;|$))", re.MULTILINE)
# What a syntax error's message means in terms a small model acts on (it sent such code back unchanged).
_SYNTAX_FIXES = {
    "expected 'else' after 'if' expression": "a conditional expression needs an else: write `A if CONDITION else B`, "
                                              "or use an if statement",
    "unterminated string literal": "close the string on the line where it starts",
    "unterminated triple-quoted string literal": "close the triple-quoted string, or better, write no docstrings",
    "was never closed": "close every bracket you open",
    "unmatched": "remove the closing bracket that has no opening one",
    "expected ':'": "end the def, class, if, for, while or else line with a colon",
    "unindent does not match": "indent each block by 4 spaces, consistently",
    "expected an indented block": "give the block a body (return None where there is nothing to do)",
}
# What to write instead of a refused builtin; each is ordinary code the sandbox allows.
_INSTEAD_OF_CALL = {
    "setattr": "assign self.name = value directly, or keep a dict on self (self.values[key] = value)",
    "delattr": "keep a dict on self and delete its key",
    "vars": "keep what you need in a dict on self",
    "globals": "keep state on self",
    "locals": "use the variables directly",
    "open": "use only the hook's arguments and state; there are no files",
    "input": "use only the hook's arguments and state",
    "eval": "write the expression as code",
    "exec": "write the code directly",
}


# Hints whose text is fixed, by a marker the error text contains, in the order they are given.
_HINT_BY_MARKER = {
    "NoneType": 'a value was None: state["best"]["val_bpb"] is None before the baseline is measured (iteration 0), '
                'and a record\'s or result\'s "val_bpb" is None for crashed iterations; when a value you need is '
                "None, return None from the hook.",
    "ZeroDivisionError": "a division by zero: check that the divisor is not 0 before dividing (values such as a "
                         "change in val_bpb can be 0), and return None from the hook when it is.",
    "math domain error": "math.log or math.sqrt was given 0 or a negative number: check the value first, and return "
                         "None from the hook when it is not above 0.",
    "IndexError": "a list was shorter than the code assumed (a run has few records at its start): check len() "
                  "before indexing, and return None when there are too few.",
    "module-level": "move that statement into a method (or __init__): module level may hold only imports, "
                    "NAME = constant lines, functions and the one class.",
    "exactly one top-level class": "define one class only; turn other classes into methods of it or into plain "
                                   "functions.",
    "__init__ must be callable": "write def __init__(self): with no other parameters, and set every starting value "
                                 "inside it.",
    "blocks the search: filter()": 'filter() must return None for most proposals: return {"reject": reason} only '
                                   "when the proposal shows the exact problem of the idea (for example, it repeats a "
                                   "change already tried and discarded), and None otherwise, also when a value it "
                                   "needs is missing or None.",
    "proposals propose() made": "propose() must return proposals the engine accepts: only parameters of "
                                "state[\"search_space\"] that are not locked or in state[\"frozen\"], values within "
                                "their min and max and different from state[\"config\"]; return None to let the "
                                "LLM propose.",
    "is not in the search space": "name only real parameters, read at run time from the state: [p[\"name\"] for p "
                                   "in state[\"search_space\"] if not p[\"locked\"] and p[\"name\"] not in "
                                   "state[\"frozen\"]] (e.g. MATRIX_LR, WARMUP_RATIO), never placeholders such "
                                   "as PARAM1.",
    "inert": "no hook changed a decision on any recorded trace: replace every ... with a body, and make a deciding "
             "hook (restrict, propose, filter or accept) return a value when a condition that ordinary runs meet "
             "holds (for example: the last 3 records were all discarded).",
}


def dry_run_hints(error: str) -> list[str]:
    """How to fix each kind of error a failed dry run reports, in words naming the hook and the name involved.

    Shown only the traceback, a small model sent its code back unchanged: `result` used inside filter, a
    helper method called but never written, state["best"]["val_bpb"] compared while None.
    """
    error = words_unquoted(error)
    hints: list[str] = []
    raised_in = _RAISED_IN.findall(error)
    hook = raised_in[0] if raised_in else None
    for name in dict.fromkeys(_NAME_ERROR.findall(error)):
        where = f"{hook}(self, {HOOK_SKELETON[hook][0]})" if hook else "that method"
        owners = [h for h, (args, _, _) in HOOK_SKELETON.items() if name in args.split(", ") and h != hook]
        also = f" ({name} is an argument of {owners[0]} only)" if owners else ""
        hints.append(f"{name!r} is not defined in {where}{also}: use only its arguments, what self remembers, "
                     "or state.")
    for owner, name in dict.fromkeys(_ATTRIBUTE_ERROR.findall(error)):
        if owner in _PLAIN_TYPES:  # a small model wrote frozen.contains(name) for `name in frozen`
            hints.append(f"a {owner} has no attribute {name!r} (the hooks' arguments are plain JSON values): "
                         f"use {_PLAIN_TYPES[owner]}.")
        elif owner != "NoneType":  # None has its own hint below
            hints.append(f"the class uses self.{name} but never defines it: write the method `def {name}(self, ...)` "
                         f"in the class, or set self.{name} in __init__, or do not use it.")
    if "NoneType" in error and (guard := _none_guard(error)):
        hints.append(guard)
    for key in dict.fromkeys(_KEY_ERROR.findall(error)):
        if key in _PROTOCOL_KEYS or key.isupper():  # MATRIX_LR: a parameter a record did not change
            hints.append(f"a dict has no key {key!r}: read it with .get({key!r}) and handle None; the shapes of "
                         "state, record, proposal and result are in the protocol above.")
        else:  # a small model read state['seen'] for the self.seen its own __init__ had set
            hints.append(f"{key!r} is not a key of state, record, proposal or result (state has only "
                         f"{', '.join(State.__annotations__)}): keep what the mechanism remembers on self, "
                         f"e.g. self.{key if key.isidentifier() else 'values'}, set in __init__ and on_result.")
    for name in dict.fromkeys(_MUST_RETURN.findall(error)):
        hints.append(f"{name}() must return {HOOK_SKELETON[name][1]}, nothing else "
                     '(only filter returns {"reject": ...}; only accept returns {"keep": ..., "reason": ...}).')
    for listed, defined in _HOOKS_MISMATCH.findall(error):
        wanted, written = _names(listed), _names(defined)
        extra = [h for h in written if h not in wanted]
        missing = [h for h in wanted if h not in written]
        fix = "; ".join(part for part in (f"remove {', '.join(extra)}" if extra else "",
                                          f"write {', '.join(missing)}" if missing else "") if part)
        hints.append(f"define exactly the hooks of the class skeleton, {', '.join(wanted)}, and no other hook "
                     f"method ({fix}); helpers with other names are fine.")
    for module in dict.fromkeys(_IMPORT_REFUSED.findall(error)):
        hints.append(f"{module} cannot be imported: use plain lists with the allowed modules instead (statistics.mean, "
                     "statistics.stdev, min, max, sorted, math.log, random.choice).")
    for name in dict.fromkeys(_ARITY.findall(error)):
        hints.append(f"write the method as def {name}(self, {HOOK_SKELETON[name][0]}): exactly these parameters.")
    for written, wanted in _CLASS_NAME.findall(error):
        hints.append(f"rename class {written} to {wanted}.")
    for name in dict.fromkeys(_CALL_REFUSED.findall(error)):
        hints.append(f"{name}() is not available: {_INSTEAD_OF_CALL.get(name, 'do it without that call')}.")
    if "Out of range float" in error:
        hints.append("a hook returned inf or NaN (for example float(\"inf\") left in a running minimum): "
                     "return None instead when there is no finite value.")
    elif "not JSON serializable" in error:
        hints.append("a hook returned a value JSON cannot hold (a set, a tuple key, an object): return plain "
                     "dicts, lists, str, int, float, bool or None, e.g. sorted(list(names)) for a set.")
    for name in dict.fromkeys(_DUNDER.findall(error)):
        instead = _INSTEAD_OF_DUNDER.get(name, "the operator or builtin function that calls it")
        hints.append(f"{name} cannot be used directly: write {instead} instead.")
    for line, message, text in _SYNTAX_ERROR.findall(error):
        fix = next((fix for key, fix in _SYNTAX_FIXES.items() if key in message), "write it as valid Python 3")
        shown = f" (`{text}`)" if text else ""
        hints.append(f"line {line}{shown} is not valid Python: {fix}.")
    hints += [hint for marker, hint in _HINT_BY_MARKER.items() if marker in error]
    return hints


# Every key the hooks' arguments can have; a KeyError for another one is a value the model meant to keep itself.
_PROTOCOL_KEYS = {key for shape in (State, TraceRecord, Proposal, Result, SearchParam, BestView, BaselineView)
                  for key in shape.__annotations__} | {"old", "new"}
_MECHANISM_LINE = re.compile(r'File "<mechanism:[^>]*>", line (\d+), in \w+\n[ \t]*(.+)')


def _none_guard(error: str) -> str | None:
    """For a TypeError on None, the failing line's operands and the guard to write before using them.

    Told in general that a value may be None, a small model guarded record["val_bpb"] and went on comparing
    it with state["best"]["val_bpb"], None at iteration 0, through both repairs.
    """
    found = _MECHANISM_LINE.search(error)
    if not found:
        return None
    line, source = found.group(1), found.group(2).strip()
    text = re.sub(r"^(if|elif|while|return|assert)\s+", "", source).rstrip(":")
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    operands: list[str] = []
    for node in ast.walk(tree):
        sides = ([node.left, *node.comparators] if isinstance(node, ast.Compare)
                 else [node.left, node.right] if isinstance(node, ast.BinOp) else [])
        operands += [ast.unparse(side) for side in sides
                     if isinstance(side, (ast.Subscript, ast.Name, ast.Attribute, ast.Call))]
    operands = list(dict.fromkeys(operands))[:3]
    if not operands:
        return None
    checks = " and ".join(f"{operand} is not None" for operand in operands)
    return (f"line {line} (`{source}`) used None as a number: check {', '.join(operands)} first, "
            f"e.g. `if {checks}:` around it, and return None from the hook otherwise.")


def cut_off_note(round_name: str) -> str:
    """Said after the defect of a reply that stopped at the reply limit: the fix is a shorter reply."""
    limit = REPLY_TOKENS.get(round_name, 1200)
    if round_name == "generate":
        return (f". Your reply was cut off at the reply limit ({limit} tokens) before the module ended: write a "
                f"shorter module, at most {MAX_MODULE_LINES} lines, with no docstrings or comments.")
    return (f". Your reply was cut off at the reply limit ({limit} tokens) before the JSON ended: write shorter "
            "texts, one or two sentences each.")


def _names(listed: str) -> list[str]:
    return [name for name in re.findall(r"'(\w+)'", listed) if name in HOOK_NAMES]


def repair_prompt(round_name: str, original_prompt: str, reply: str, error: str,
                  context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> str:
    """The original request, then the defect and the refused reply quoted, then the ask to fix only that.

    The original request comes first so that a local server reuses what it already computed for it (llama.cpp
    keeps the longest common prefix of consecutive prompts), and the defect comes last, nearest the reply.
    """
    error = words_unquoted(error)
    hints = dry_run_hints(error) if round_name == "generate" else []
    error = _cut(error, 1500)
    if hints:
        error += "\n\nHow to fix it:\n" + "\n".join(f"- {hint}" for hint in hints)
    frame = f"""{original_prompt.rstrip()}

## YOUR PREVIOUS REPLY TO THIS REQUEST WAS REFUSED

Defect:
{error}

Your previous reply:
{{reply}}

Reply again to the request above, in exactly the requested format, and fix what the defect names; keep
everything else that was right.
"""
    room = (context_tokens - REPLY_TOKENS.get(round_name, 1200) - SYSTEM_TOKENS - 2 * TEMPLATE_OVERHEAD_TOKENS
            - estimate_tokens(frame))
    return frame.replace("{reply}", _cut_bytes(reply, max(100, room)), 1)
