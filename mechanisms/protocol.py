"""The mechanism protocol: hook names, the JSON shapes they exchange, and their type checks.

Pure Python, no Django: the search engine, the validation ladder and the tests share it. The
sandboxed child (`host_child.py`) deliberately does NOT import this module (it must not load
project code); the few facts it needs are passed to it on its command line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypedDict

HOOK_NAMES: tuple[str, ...] = ("on_result", "prompt_sections", "restrict", "propose", "filter", "accept")

# Standard-library modules a mechanism may import. Everything here is pure computation: no
# files, processes, network, interpreter internals or code loading.
ALLOWED_IMPORTS: tuple[str, ...] = (
    "math",
    "random",
    "statistics",
    "itertools",
    "functools",
    "collections",
    "heapq",
    "bisect",
    "dataclasses",
    "typing",
    "json",
    "re",
    "copy",
    "enum",
    "abc",
    "fractions",
    "decimal",
    "operator",
    "string",
    "textwrap",
)


# Bounds on what a hook may hand back, so one mechanism cannot flood the proposer's prompt.
MAX_PROMPT_SECTIONS = 8
MAX_PROMPT_SECTION_CHARS = 4000
MAX_HYPOTHESIS_CHARS = 2000
MAX_REASON_CHARS = 1000


class SearchParam(TypedDict, total=False):
    name: str
    type: str
    min: float | int | None
    max: float | int | None
    choices: list[Any] | None
    log: bool
    locked: bool
    default: Any
    description: str


class Change(TypedDict):
    old: Any
    new: Any


class TraceRecord(TypedDict, total=False):
    # Every key is present in what a run (and a dry run, see ladder.run_shaped) gives a mechanism;
    # total=False only lets tests and older recordings build partial records.
    iteration: int
    kind: str
    changes: dict[str, Change]
    config: dict[str, Any]  # the full config this iteration trained
    val_bpb: float | None
    best_before: float | None  # the incumbent's val_bpb before this iteration
    status: str
    failure_class: str
    hypothesis: str
    proposal_source: str
    training_seconds: float


class BestView(TypedDict):
    val_bpb: float | None
    iteration: int | None


class BaselineView(TypedDict):
    val_bpb: float | None
    noise_sd: float | None


class State(TypedDict, total=False):
    iteration: int
    preset: str
    strategy: str  # the last outer cycle's strategy text
    search_space: list[SearchParam]
    frozen: list[str]
    guidance: str
    config: dict[str, Any]
    best: BestView
    baseline: BaselineView
    trace: list[TraceRecord]


class Proposal(TypedDict):
    changes: dict[str, Any]
    hypothesis: str


class Result(TypedDict):
    val_bpb: float | None
    status: str
    changes: dict[str, Any]
    best_val_bpb: float | None
    noise_sd: float | None


class FilterRejection(TypedDict):
    reject: str


class AcceptOverride(TypedDict):
    keep: bool
    reason: str


class MechanismSource(TypedDict):
    name: str
    class_name: str
    code: str


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of the mechanism host process (see sandbox/host.py for how each is applied)."""

    address_space_bytes: int = 512 * 1024 * 1024
    # Total CPU of the host over its life; the per-call wall clock is the real guard, this is
    # the backstop. Generous because one host serves a whole run.
    cpu_seconds: int = 120
    open_files: int = 32
    file_size_bytes: int = 1024 * 1024
    max_response_bytes: int = 256 * 1024


DEFAULT_LIMITS = SandboxLimits()
DEFAULT_CALL_TIMEOUT_SECONDS = 2.0
# The most a step waits on one mechanism's host in all (start, load, replay, every hook call),
# however many calls and progress lines: a host that keeps announcing progress cannot hold a step
# for 2 s per record of a long trace.
DEFAULT_STEP_WAIT_SECONDS = 30.0


class HookReturnError(ValueError):
    """A hook returned a value outside its contract."""

    def __init__(self, hook: str, message: str) -> None:
        super().__init__(f"{hook}() {message}")
        self.hook = hook


def _is_json_value(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, (bool, str, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json_value(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v, depth + 1) for k, v in value.items())
    return False


def _check_text(hook: str, field: str, value: Any, limit: int, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise HookReturnError(hook, f"{field} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise HookReturnError(hook, f"{field} must not be empty")
    if len(value) > limit:
        raise HookReturnError(hook, f"{field} is {len(value)} characters; the limit is {limit}")
    return value


def check_hook_return(hook: str, value: Any) -> Any:
    """Validate a hook's return value and return its normalized form.

    Normal forms: on_result -> None; prompt_sections -> list[str]; restrict -> list[str] | None;
    propose -> Proposal | None; filter -> FilterRejection | None (None = accepted);
    accept -> AcceptOverride | None.
    """
    if hook not in HOOK_NAMES:
        raise HookReturnError(hook, f"is not a protocol hook (known: {', '.join(HOOK_NAMES)})")
    if not _is_json_value(value):
        raise HookReturnError(hook, f"returned a non-JSON value of type {type(value).__name__}")
    if hook == "on_result":
        if value is not None:
            raise HookReturnError(hook, f"must return None, got {type(value).__name__}")
        return None
    if hook == "prompt_sections":
        return _check_prompt_sections(value)
    if hook == "restrict":
        return _check_restrict(value)
    if hook == "propose":
        return _check_proposal(hook, value, allow_none=True)
    if hook == "filter":
        return _check_filter(value)
    return _check_accept(value)


def _check_prompt_sections(value: Any) -> list[str]:
    hook = "prompt_sections"
    if value is None:
        return []
    sections = [value] if isinstance(value, str) else value
    if not isinstance(sections, list):
        raise HookReturnError(hook, f"must return a string, a list of strings or None, got {type(value).__name__}")
    if len(sections) > MAX_PROMPT_SECTIONS:
        raise HookReturnError(hook, f"returned {len(sections)} sections; the limit is {MAX_PROMPT_SECTIONS}")
    checked = [_check_text(hook, "each section", s, MAX_PROMPT_SECTION_CHARS, required=False) for s in sections]
    return [s for s in checked if s.strip()]


def _check_restrict(value: Any) -> list[str] | None:
    hook = "restrict"
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) and name for name in value):
        raise HookReturnError(hook, "must return a list of parameter names (non-empty strings) or None")
    if not value:
        # "Nothing to restrict", as an empty prompt_sections list is "nothing to add": the engine could not
        # act on a restriction that leaves no parameter to change. A small model wrote [] for "no
        # restriction" and kept it through the repairs; refusing it bought no safety.
        return None
    return list(dict.fromkeys(value))


def _check_proposal(hook: str, value: Any, *, allow_none: bool) -> Proposal | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, dict):
        raise HookReturnError(hook, f"must return a proposal dict or None, got {type(value).__name__}")
    unknown = set(value) - {"changes", "hypothesis"}
    if unknown:
        raise HookReturnError(hook, f"proposal has keys other than changes and hypothesis: "
                                     f"{json.dumps(sorted(unknown))[:300]}")
    changes = value.get("changes")
    if not isinstance(changes, dict) or not changes:
        raise HookReturnError(hook, "proposal['changes'] must be a non-empty dict {PARAM: new_value}")
    hypothesis = _check_text(hook, "proposal['hypothesis']", value.get("hypothesis"), MAX_HYPOTHESIS_CHARS,
                             required=False)
    return {"changes": dict(changes), "hypothesis": hypothesis}


def _check_filter(value: Any) -> FilterRejection | None:
    hook = "filter"
    if value is None or value is True:
        return None
    if isinstance(value, dict) and set(value) == {"reject"}:
        return {"reject": _check_text(hook, "reject reason", value["reject"], MAX_REASON_CHARS, required=True)}
    raise HookReturnError(hook, "must return None or True (accept) or {'reject': 'reason'}")


def _check_accept(value: Any) -> AcceptOverride | None:
    hook = "accept"
    if value is None:
        return None
    if isinstance(value, dict) and set(value) <= {"keep", "reason"} and isinstance(value.get("keep"), bool):
        reason = _check_text(hook, "reason", value.get("reason"), MAX_REASON_CHARS, required=False)
        return {"keep": value["keep"], "reason": reason}
    raise HookReturnError(hook, "must return None or {'keep': bool, 'reason': str}")


def best_of(trace: list[TraceRecord]) -> BestView:
    """The incumbent implied by a trace: the lowest val_bpb among baseline and kept records."""
    best: BestView = {"val_bpb": None, "iteration": None}
    for record in trace:
        value = record.get("val_bpb")
        if record.get("status") not in ("baseline", "keep") or value is None:
            continue
        if best["val_bpb"] is None or value < best["val_bpb"]:
            best = {"val_bpb": value, "iteration": record.get("iteration")}
    return best


def state_before(state: State, trace: list[TraceRecord], index: int) -> State:
    """The state a mechanism saw just before trace[index] was decided.

    Used by replay and by the ladder's dry run. Only what the trace determines is rewound
    (trace, iteration, best); config, search space, frozen set and guidance are the given
    state's, because the trace does not record their history. host_child.py implements the
    same rule; tests keep the two in step.
    """
    earlier = trace[:index]
    rewound: State = {**state, "trace": earlier, "best": best_of(earlier)}
    rewound["iteration"] = trace[index]["iteration"] if index < len(trace) else len(trace)
    return rewound


def proposal_of(record: TraceRecord) -> Proposal:
    """The proposal a trace record was produced from (the new value of each change)."""
    return {
        "changes": {name: change.get("new") for name, change in record.get("changes", {}).items()},
        "hypothesis": record.get("hypothesis", ""),
    }


def result_of(record: TraceRecord, best_before: float | None, noise_sd: float | None) -> Result:
    """The result the accept hook would have been shown for a trace record."""
    status = record.get("status", "discard")
    return {
        "val_bpb": record.get("val_bpb"),
        "status": status if status in ("keep", "discard", "crash") else "discard",
        "changes": proposal_of(record)["changes"],
        "best_val_bpb": best_before,
        "noise_sd": noise_sd,
    }


def protocol_description(limits: SandboxLimits = DEFAULT_LIMITS,
                         call_timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS) -> str:
    """The protocol as given to the Level 2 model: hooks, state format, imports and limits."""
    return f"""\
# The mechanism protocol

A mechanism is ONE Python module defining exactly ONE class (the spec names it) with a
no-argument constructor. The class defines any subset of these hook methods; the runner calls
every active mechanism at fixed points of each iteration, in activation order:

| hook | called | must return |
|---|---|---|
| on_result(self, record, state) | after every finished iteration, and on replay | None |
| prompt_sections(self, state) | before proposing | str, list of str, or None (extra text for the proposer) |
| restrict(self, state) | before proposing | list of parameter names that may change now, or None |
| propose(self, state) | before the LLM proposer | a proposal dict (replaces the LLM's), or None |
| filter(self, proposal, state) | after a proposal is made | None or True = accept; {{"reject": "reason"}} = re-ask |
| accept(self, result, state) | after training | None = no opinion; {{"keep": bool, "reason": str}} overrides |

Mechanism state is NOT stored: it is rebuilt by replaying the run's trace through on_result,
so everything the mechanism remembers must be derived from the records it is shown there
(or from state["trace"], which always holds every finished iteration, oldest first).

All arguments are fresh JSON copies (changing them has no effect). Hooks must return plain
JSON values (dict/list/str/int/float/bool/None; no sets, tuples-as-keys, objects, NaN or
infinity). An exception, a wrong type, or a timeout DEACTIVATES the mechanism for the run.

## Shapes

state = {{
  "iteration": int,             # index of the iteration about to be decided
  "search_space": [{{"name", "type", "min", "max", "choices", "log", "locked", "default", "description"}}],
  "frozen": [param names],      # frozen by the strategy level; do not propose them
  "guidance": str,
  "config": {{...}},             # the current best (incumbent) full config
  "best": {{"val_bpb": float|None, "iteration": int|None}},  # None at iteration 0 (no baseline yet)
  "baseline": {{"val_bpb": float|None, "noise_sd": float|None}},
  "trace": [record, ...],
}}
record = {{"iteration": int, "kind": "baseline"|"baseline_repeat"|"proposal"|"reevaluation",
          "changes": {{"PARAM": {{"old": v, "new": v}}}}, "val_bpb": float|None,
          "status": "baseline"|"keep"|"discard"|"crash"|"invalid_proposal", "failure_class": str,
          "hypothesis": str, "proposal_source": str, "training_seconds": float}}
proposal = {{"changes": {{"PARAM": new_value}}, "hypothesis": str}}
result = {{"val_bpb": float|None, "status": "keep"|"discard"|"crash", "changes": {{...}},
          "best_val_bpb": float|None, "noise_sd": float|None}}
Lower val_bpb is better; any val_bpb may be None (no baseline yet at iteration 0, a crashed or
invalid iteration), so check for None before comparing. Values are range-checked against the
search space after your hooks.

## Environment

Allowed imports (nothing else): {", ".join(ALLOWED_IMPORTS)}.
Not available: open, eval, exec, compile, __import__, input, globals, locals, vars, setattr,
delattr, and any dunder attribute access (__class__, __dict__, __subclasses__, ...). Defining
__init__ (and other dunder methods) is fine. No files, network, processes, threads, clocks
beyond the modules above. print() output is discarded.
Module level may contain only imports, constants, functions and the one class.

Limits: {call_timeout:g} s wall clock per hook call; {limits.address_space_bytes // (1024 * 1024)} MB of memory;
{limits.cpu_seconds} CPU seconds over the host's life; a return value of at most
{limits.max_response_bytes // 1024} KB of JSON; at most {MAX_PROMPT_SECTIONS} prompt sections of
{MAX_PROMPT_SECTION_CHARS} characters.
"""
