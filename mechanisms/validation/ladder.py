"""The validation ladder: spec -> static check -> sandboxed import -> sandboxed dry run.

Every step is recorded with its outcome, detail and duration, and the ladder stops at the first
failed step. The dry run replays recorded traces through the hooks under the sandbox's limits;
the mechanism must return well-typed values AND change at least one decision, or it is inert and
rejected (design requirement 1: a mechanism that never fires is not a mechanism).
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from mechanisms.protocol import (
    HOOK_NAMES,
    HookReturnError,
    State,
    TraceRecord,
    check_hook_return,
    proposal_of,
    result_of,
    state_before,
)
from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost
from mechanisms.validation.proposal_check import describe_changes, proposal_problems, tunable, unchangeable
from mechanisms.validation.static_check import static_check
from trainer.schema import DEFAULT_PRESET, schema_json

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"  # mechanisms/fixtures
# The paper's published per-repeat reports (MIT, notice in that folder), kept in the repository so a
# fresh clone replays them too.
PAPER_RUNS_DIR = FIXTURES_DIR / "paper_runs"
PAPER_RUN_FILES = ("A1.json", "C1.json", "D1.json")
SPEC_TEXT_FIELDS = ("rationale", "state_kept", "expected_effect")
MAX_EXAMPLES_PER_TRACE = 5


class LadderStep(TypedDict):
    step: str  # "spec" | "static" | "import" | "dry_run"
    ok: bool
    detail: str
    seconds: float


@dataclass
class TraceFixture:
    """A trace with the state it was recorded under (search space, incumbent config, noise)."""

    name: str
    trace: list[TraceRecord]
    state: State


@dataclass
class LadderReport:
    steps: list[LadderStep] = field(default_factory=list)
    ok: bool = False
    spec: dict[str, Any] | None = None
    dry_run_report: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_step(self) -> LadderStep | None:
        return next((step for step in self.steps if not step["ok"]), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- traces --------------------------------------------------------------------------------------


def default_search_space() -> list[dict[str, Any]]:
    """The trainer's own search space: a dry run must judge proposals by the rules of a real run."""
    return schema_json(DEFAULT_PRESET)


def run_shaped(trace: list[TraceRecord], search_space: list[dict[str, Any]] | None = None) -> list[TraceRecord]:
    """A recorded trace in exactly the shape a real run gives its mechanisms.

    A dry run must be indistinguishable from a run by what the mechanism is shown: a time bomb
    behaved in the dry run and attacked in real runs, telling the two apart by one field the
    recorded traces lacked. So every record carries a real run's keys with a real run's types
    (``runs``' Iteration.as_trace_record: the config trained, the best value before it) and
    ``proposal_source`` takes a real run's values (``agent`` for a proposal, "" otherwise), not
    where the recording came from.
    """
    space = search_space if search_space is not None else default_search_space()
    config: dict[str, Any] = {param["name"]: param.get("default") for param in space}
    best: float | None = None
    shaped: list[TraceRecord] = []
    for record in trace:
        changes = record.get("changes") or {}
        trained = {**config, **{name: change.get("new") for name, change in changes.items()}}
        kind = str(record.get("kind", "proposal"))
        value = record.get("val_bpb")
        shaped.append({
            "iteration": int(record["iteration"]), "kind": kind, "changes": changes, "config": trained,
            "val_bpb": None if value is None else float(value), "best_before": best,
            "status": str(record.get("status", "discard")), "failure_class": str(record.get("failure_class", "ok")),
            "hypothesis": str(record.get("hypothesis", "")),
            "proposal_source": "agent" if kind == "proposal" else "",
            "training_seconds": float(record.get("training_seconds") or 0.0),
        })
        if record.get("status") in ("baseline", "keep") and value is not None:
            best = float(value) if best is None else min(best, float(value))
        if record.get("status") == "keep":
            config = trained
    return shaped


def state_for_trace(trace: list[TraceRecord], search_space: list[dict[str, Any]] | None = None,
                    noise_sd: float | None = None) -> State:
    """The final state of a recorded trace, in a real run's shape: the incumbent config replays the kept changes."""
    space = search_space if search_space is not None else default_search_space()
    config = {param["name"]: param.get("default") for param in space}
    baseline = next((r["val_bpb"] for r in trace if r.get("kind") == "baseline"), None)
    for record in trace:
        if record.get("status") == "keep":
            config.update({name: change.get("new") for name, change in record.get("changes", {}).items()})
    final = state_before({"iteration": 0, "preset": DEFAULT_PRESET, "search_space": space, "frozen": [],  # type: ignore[typeddict-item]
                          "guidance": "", "strategy": "", "config": config,
                          "best": {"val_bpb": None, "iteration": None},
                          "baseline": {"val_bpb": baseline, "noise_sd": noise_sd}, "trace": []},
                         trace, len(trace))
    return final


def shaped_fixture(name: str, trace: list[TraceRecord], noise_sd: float | None = None) -> TraceFixture:
    """A dry-run fixture whose records and state have a real run's shape (see run_shaped)."""
    shaped = run_shaped(trace)
    return TraceFixture(name, shaped, state_for_trace(shaped, noise_sd=noise_sd))


def recorded_fixtures() -> list[TraceFixture]:
    """The project's recorded traces in mechanisms/fixtures/ (realistic failure modes)."""
    fixtures = []
    for path in sorted(FIXTURES_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        fixtures.append(shaped_fixture(path.stem, data["trace"], noise_sd=data.get("noise_sd")))
    return fixtures


def paper_run_trace(data: dict[str, Any]) -> list[TraceRecord]:
    """Convert a published paper run (prose only, no changes) to trace records.

    Group C/D traces restart iteration numbers at each batch and re-measure a baseline at its
    start; iterations are renumbered in order and those later baselines become baseline repeats.
    Crashes carry bpb 0, which means "no value".
    """
    source = f"paper:{data.get('group', '?')}{data.get('repeat', '?')}"
    trace: list[TraceRecord] = []
    for position, row in enumerate(data.get("trace", [])):
        is_baseline = str(row.get("desc", "")).strip().lower() == "baseline"
        crashed = row.get("status") == "crash" or not row.get("bpb")
        kind = ("baseline" if position == 0 else "baseline_repeat") if is_baseline else "proposal"
        status = "baseline" if is_baseline else ("crash" if crashed else str(row.get("status", "discard")))
        trace.append({
            "iteration": position, "kind": kind, "changes": {}, "val_bpb": None if crashed else float(row["bpb"]),
            "status": status, "failure_class": "crashed" if crashed else "ok",
            "hypothesis": str(row.get("desc", "")), "proposal_source": source, "training_seconds": 0.0,
        })
    return trace


def paper_run_fixtures(directory: Path = PAPER_RUNS_DIR) -> list[TraceFixture]:
    """The paper's published runs; a missing file is an error, never a dry run with fewer traces."""
    missing = [name for name in PAPER_RUN_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"paper run data missing from {directory}: {', '.join(missing)}")
    fixtures = []
    for path in (directory / name for name in PAPER_RUN_FILES):
        fixtures.append(shaped_fixture(f"paper_{path.stem}", paper_run_trace(json.loads(path.read_text()))))
    return fixtures


def default_fixtures() -> list[TraceFixture]:
    return recorded_fixtures() + paper_run_fixtures()


def _as_fixture(index: int, item: TraceFixture | list[TraceRecord]) -> TraceFixture:
    if isinstance(item, TraceFixture):
        return item
    return shaped_fixture(f"trace_{index}", item)


# -- the steps -------------------------------------------------------------------------------------


def check_spec(spec: dict[str, Any] | str) -> tuple[dict[str, Any] | None, list[str]]:
    """Parse and check a spec; returns (spec or None, problems)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            return None, [f"spec is not valid JSON: {exc}"]
    if not isinstance(spec, dict):
        return None, ["spec must be a JSON object"]
    problems = []
    for key in ("name", "class_name"):
        if not (isinstance(spec.get(key), str) and spec[key].isidentifier()):
            problems.append(f"spec['{key}'] must be a Python identifier")
    hooks = spec.get("hooks")
    if not (isinstance(hooks, list) and hooks and all(isinstance(h, str) for h in hooks)):
        problems.append(f"spec['hooks'] must be a non-empty list of hook names ({', '.join(HOOK_NAMES)})")
    else:
        unknown = [h for h in hooks if h not in HOOK_NAMES]
        if unknown:
            problems.append(f"spec['hooks'] names unknown hooks {unknown} (known: {', '.join(HOOK_NAMES)})")
        spec = {**spec, "hooks": list(dict.fromkeys(hooks))}  # ["filter", "filter", "filter"] means ["filter"]
    for key in SPEC_TEXT_FIELDS:
        if not (isinstance(spec.get(key), str) and spec[key].strip()):
            problems.append(f"spec['{key}'] must be a non-empty string")
    return (spec if not problems else None), problems


def class_hooks(node: ast.ClassDef) -> list[str]:
    """The protocol hooks a class defines, in protocol order."""
    methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
    return [hook for hook in HOOK_NAMES if hook in methods]


def defined_hooks(code: str, class_name: str) -> list[str]:
    tree = ast.parse(code)
    return next((class_hooks(node) for node in tree.body
                 if isinstance(node, ast.ClassDef) and node.name == class_name), [])


def _hooks_mismatch(spec_hooks: list[str], actual: list[str]) -> str | None:
    if set(spec_hooks) == set(actual):
        return None
    return f"the spec lists hooks {sorted(spec_hooks)} but the class defines {sorted(actual)}"


class _DryRunFailure(Exception):
    pass


def _dry_run_trace(host: MechanismHost, name: str, hooks: list[str], fixture: TraceFixture) -> dict[str, Any]:
    """Walk one trace: before each record, the decision hooks; after it, on_result.

    A restriction or proposal counts only if the engine would act on it: a proposal is checked
    against the state's search space, frozen set and incumbent (and the restriction in force), as
    the engine checks every proposal. Those it would refuse are counted apart, with the reason.
    """
    changed: dict[str, int] = {"prompt_added": 0, "restricted": 0, "proposal_replaced": 0, "proposal_rejected": 0,
                               "acceptance_overridden": 0}
    invalid: dict[str, int] = {"proposals": 0, "restrictions": 0}
    calls: dict[str, int] = {}
    max_seconds: dict[str, float] = {}
    examples: list[dict[str, Any]] = []
    invalid_examples: list[dict[str, Any]] = []

    def call(hook: str, *args: Any) -> Any:
        started = time.monotonic()
        calls[hook] = calls.get(hook, 0) + 1
        try:
            raw = host.call(name, hook, *args)
        except MechanismCallError as error:
            raise _DryRunFailure(f"{hook}() {error.kind} at iteration {args[-1]['iteration']}: {error}") from error
        except HostError as error:
            raise _DryRunFailure(f"{hook}() {error.kind} at iteration {args[-1]['iteration']}: {error}") from error
        finally:
            max_seconds[hook] = max(max_seconds.get(hook, 0.0), round(time.monotonic() - started, 4))
        try:
            return check_hook_return(hook, raw)
        except HookReturnError as error:
            raise _DryRunFailure(f"type error at iteration {args[-1]['iteration']}: {error}") from error

    def note(effect: str, iteration: int, detail: Any) -> None:
        changed[effect] += 1
        if len(examples) < MAX_EXAMPLES_PER_TRACE:
            examples.append({"iteration": iteration, "effect": effect, "detail": str(detail)[:300]})

    def refuse(kind: str, iteration: int, detail: str, problems: list[str]) -> None:
        invalid[kind] += 1
        if len(invalid_examples) < MAX_EXAMPLES_PER_TRACE:
            invalid_examples.append({"iteration": iteration, "kind": kind, "detail": detail[:300],
                                     "reason": "; ".join(problems)[:300]})

    for index, record in enumerate(fixture.trace):
        state = state_before(fixture.state, fixture.trace, index)
        iteration = state["iteration"]
        is_proposal = record.get("kind") == "proposal"
        allowed: set[str] | None = None
        if is_proposal and "prompt_sections" in hooks and (sections := call("prompt_sections", state)):
            note("prompt_added", iteration, sections[0])
        if is_proposal and "restrict" in hooks and (names := call("restrict", state)) is not None:
            changeable = tunable(state)
            kept = set(names) & changeable
            if not kept:  # the engine ignores a restriction that leaves nothing to change
                refuse("restrictions", iteration, f"restricted to {', '.join(names)}",
                       [reason for n in names if (reason := unchangeable(n, state))])
            elif kept != changeable:
                allowed = kept
                note("restricted", iteration, sorted(kept))
        if is_proposal and "propose" in hooks and (proposal := call("propose", state)) is not None:
            problems = proposal_problems(proposal["changes"], state, allowed)
            if problems:
                refuse("proposals", iteration, "proposed " + describe_changes(proposal["changes"], state["config"]),
                       problems)
            else:
                note("proposal_replaced", iteration, proposal)
        # A recorded proposal is one the engine took, so a rejection of it always changes a decision.
        if is_proposal and record.get("changes") and "filter" in hooks:
            verdict = call("filter", proposal_of(record), state)
            if verdict is not None:
                note("proposal_rejected", iteration, verdict["reject"])
        if is_proposal and "accept" in hooks:
            result = result_of(record, state["best"]["val_bpb"], fixture.state["baseline"]["noise_sd"])
            override = call("accept", result, state)
            if override is not None and override["keep"] != (record.get("status") == "keep"):
                note("acceptance_overridden", iteration, override)
        if "on_result" in hooks:
            call("on_result", record, state)
    return {"trace": fixture.name, "records": len(fixture.trace), "changed": changed,
            "changed_total": sum(changed.values()), "invalid": invalid, "invalid_total": sum(invalid.values()),
            "invalid_examples": invalid_examples, "hook_calls": calls, "max_seconds": max_seconds,
            "examples": examples}


def grouped_errors(errors: list[str]) -> str:
    """'trace: error' lines with the same error once, naming every trace it happened on: the same bug
    seen on eight traces is one defect to a reviewer and to the repair prompt, not eight."""
    by_error: dict[str, list[str]] = {}
    for line in errors:
        trace, _, error = line.partition(": ")
        by_error.setdefault(error, []).append(trace)
    return " | ".join(f"{', '.join(traces)}: {error}" for error, traces in by_error.items())


# A filter may reject at most this share of the recorded proposals it is shown. The engine asks for a
# proposal MAX_PROPOSAL_ATTEMPTS (4) times per iteration, so a filter rejecting a share r of them leaves about
# r**4 of the iterations with nothing to train: 6 % at one half, 100 % for a filter that rejects everything
# (an LLM's filter rejecting every proposal "No val_bpb provided" passed the dry run as "changed decisions"
# and turned every later iteration of its run into invalid_proposal).
MAX_FILTER_REJECT_SHARE = 0.5
MIN_FILTER_CALLS = 4


def _summed(per_trace: list[dict[str, Any]], section: str, key: str) -> int:
    """One count of the per-trace reports (e.g. "hook_calls", "filter") over all traces."""
    return sum(t.get(section, {}).get(key, 0) for t in per_trace)


def _blocking_filter(per_trace: list[dict[str, Any]]) -> str | None:
    """Why the mechanism's filter would block the search (it rejects most proposals), or None."""
    calls = _summed(per_trace, "hook_calls", "filter")
    rejected = _summed(per_trace, "changed", "proposal_rejected")
    if calls < MIN_FILTER_CALLS or rejected <= MAX_FILTER_REJECT_SHARE * calls:
        return None
    example = next((e["detail"] for t in per_trace for e in t.get("examples", [])
                    if e.get("effect") == "proposal_rejected"), "")
    return (f"blocks the search: filter() rejected {rejected} of the {calls} recorded proposals it was shown "
            f"(at most half may be rejected), e.g. {example!r}; reject only the proposals the idea is about")


DECIDING_HOOKS = tuple(hook for hook in HOOK_NAMES if hook != "on_result")


def _what_the_hooks_saw(hooks: list[str], per_trace: list[dict[str, Any]], fixtures: list[TraceFixture]) -> str:
    """How often each deciding hook was called without deciding anything, and a proposal such as filter() saw.

    Told only "inert", a small model rewrote a filter that looked for "val_bpb" in proposal["changes"] (a
    proposal is not trained yet) three times; the shape of what the hook was actually shown is the fix.
    """
    calls = {hook: _summed(per_trace, "hook_calls", hook) for hook in DECIDING_HOOKS if hook in hooks}
    if not calls:
        return "; it defines no deciding hook (prompt_sections, restrict, propose, filter or accept)"
    said = ", ".join(f"{hook}() {count} times" for hook, count in calls.items())
    text = f"; its deciding hooks were called ({said}) and changed no decision"
    if "filter" in calls:
        shown = next((proposal_of(r) for f in fixtures for r in f.trace
                      if r.get("kind") == "proposal" and r.get("changes")), None)
        if shown is not None:
            text += f"; filter() was shown proposals such as {json.dumps(shown)[:240]}"
    return text


def _refused_proposer(per_trace: list[dict[str, Any]]) -> str | None:
    """Why the mechanism's propose() would block the search (the engine refuses most of its proposals), or None.

    The engine asks again after a refused proposal, and the mechanism answers the same way: a propose() that
    returned {"param1": 10, "param2": 20} passed on its prompt sections and made four iterations in a row
    invalid_proposal in a real run.
    """
    refused = _summed(per_trace, "invalid", "proposals")
    taken = _summed(per_trace, "changed", "proposal_replaced")
    if refused == 0 or refused <= MAX_FILTER_REJECT_SHARE * (refused + taken):
        return None
    example: dict[str, Any] = next(
        (e for t in per_trace for e in t.get("invalid_examples", []) if e.get("kind") == "proposals"), {})
    return (f"blocks the search: the engine would refuse {refused} of the {refused + taken} proposals propose() "
            f"made (at most half may be refused), e.g. {example.get('detail', '')}, "
            f"because {example.get('reason', '')}")


def _dry_run(name: str, class_name: str, code: str, hooks: list[str], fixtures: list[TraceFixture],
             time_limit_per_call: float) -> tuple[bool, str, dict[str, Any]]:
    per_trace: list[dict[str, Any]] = []
    errors: list[str] = []
    for fixture in fixtures:
        # A fresh host per trace: the mechanism must start from nothing, as after a replay.
        with MechanismHost(time_limit_per_call=time_limit_per_call) as host:
            try:
                report = host.load([{"name": name, "class_name": class_name, "code": code}])
                if name in report["errors"]:
                    raise _DryRunFailure(f"load failed: {report['errors'][name]}")
                per_trace.append(_dry_run_trace(host, name, hooks, fixture))
            except (_DryRunFailure, HostError) as error:
                errors.append(f"{fixture.name}: {error}")
                per_trace.append({"trace": fixture.name, "records": len(fixture.trace), "error": str(error)})
    total = sum(t.get("changed_total", 0) for t in per_trace)
    refused = sum(t.get("invalid_total", 0) for t in per_trace)
    report_data = {"traces": per_trace, "changed_decisions": total, "invalid_decisions": refused,
                   "inert": total == 0, "type_errors": errors}
    if errors:
        return False, "hook errors: " + grouped_errors(errors)[:2000], report_data
    if not fixtures:
        return False, "no traces to dry-run on", report_data
    # A proposer refused every time and changing nothing else is inert (said below, with the reason).
    blocking = _blocking_filter(per_trace) or (_refused_proposer(per_trace) if total else None)
    if blocking:
        return False, blocking, report_data
    if total == 0:
        inert = (f"inert: the mechanism changed no decision on {len(fixtures)} traces "
                 f"({sum(len(f.trace) for f in fixtures)} records)")
        if refused:
            trace, first = next((t["trace"], e) for t in per_trace for e in t.get("invalid_examples", []))
            inert += (f"; the engine would refuse all {refused} of its changes, e.g. on {trace} at iteration "
                      f"{first['iteration']}: {first['detail']}, but {first['reason']}")
        else:
            inert += _what_the_hooks_saw(hooks, per_trace, fixtures)
        return False, inert, report_data
    summary = ", ".join(f"{t['trace']}: {t['changed_total']}" for t in per_trace)
    return True, f"changed {total} decisions ({summary})", report_data


def validate_mechanism(spec: dict[str, Any] | str, code: str,
                       traces: Sequence[list[TraceRecord] | TraceFixture] | None = None, *,
                       time_limit_per_call: float = 1.0,
                       on_step: Callable[[dict[str, Any]], None] | None = None) -> LadderReport:
    """Run the ladder; ``traces`` defaults to the recorded fixtures plus the paper runs. ``on_step`` hears
    each step as it starts ({"step": name}) and as it ends (its record), for a live view of a long dry run."""
    report = LadderReport()
    fixtures = [_as_fixture(i, t) for i, t in enumerate(traces)] if traces is not None else default_fixtures()
    tell = on_step or (lambda event: None)

    def begin(step: str) -> float:
        tell({"step": step})
        return time.monotonic()

    def record(step: str, started: float, problems: list[str], success_detail: str) -> bool:
        ok = not problems
        report.steps.append({"step": step, "ok": ok, "detail": success_detail if ok else "; ".join(problems),
                             "seconds": round(time.monotonic() - started, 4)})
        tell(dict(report.steps[-1]))
        return ok

    started = begin("spec")
    parsed, problems = check_spec(spec)
    if not record("spec", started, problems, "spec parses and names its hooks"):
        return report
    assert parsed is not None
    report.spec = parsed
    name, class_name, spec_hooks = parsed["name"], parsed["class_name"], parsed["hooks"]

    started = begin("static")
    problems = static_check(code, class_name)
    if not problems and (mismatch := _hooks_mismatch(spec_hooks, defined_hooks(code, class_name))):
        problems = [mismatch]
    if not record("static", started, problems, "no findings"):
        return report

    started = begin("import")
    try:
        with MechanismHost(time_limit_per_call=time_limit_per_call) as host:
            loaded = host.load([{"name": name, "class_name": class_name, "code": code}])
            isolation = "a confined host: bubblewrap namespaces, seccomp, rlimits"
    except HostError as error:
        loaded, isolation = {"loaded": {}, "errors": {name: f"{error.kind}: {error}"}}, ""
    problems = [f"import failed: {loaded['errors'][name]}"] if name in loaded["errors"] else []
    hooks = loaded["loaded"].get(name, [])
    if not problems and (mismatch := _hooks_mismatch(spec_hooks, hooks)):
        problems = [mismatch]
    if not record("import", started, problems, f"imported in {isolation}; hooks: {', '.join(hooks)}"):
        return report

    started = begin("dry_run")
    ok, detail, report.dry_run_report = _dry_run(name, class_name, code, hooks, fixtures, time_limit_per_call)
    record("dry_run", started, [] if ok else [detail], detail)
    report.ok = ok
    return report
