"""MechanismRuntime: the search engine's side of the active mechanisms, with attribution.

Design requirement 1: a mechanism is active only when it demonstrably fired. Every hook call
is counted (``hook_calls``) and every decision a mechanism changed is recorded (``effects``).
``hook_calls`` counts live calls made through the methods below, plus one on_result call for
the newest record of the trace (the result the mechanism sees for the first time in this
step); the on_result calls that replay older records (which happens at every start) are
counted apart in ``replay_calls``, so a runtime rebuilt for every step does not inflate a
mechanism's totals.
Requirement 2: nothing fails silently. A hook that raises, times out or returns an ill-typed
value, or whose host dies, hangs, breaks the protocol, runs outside a call or spends more than
the step's wait budget, deactivates its mechanism for the run (``deactivated``, with the reason)
and the iteration goes on without it; the other mechanisms' hosts are not touched.
``check_hosts()`` at the end of a step notices a host that died, or kept running, after its last
call. A reason is the system's finding first; what the mechanism wrote (exception text, stderr)
follows only quoted and labelled (``text.mechanism_words``), and ``kind`` says which finding it
was, so the engine can tell a mechanism's misbehaviour from the machine's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

from mechanisms.protocol import (
    DEFAULT_CALL_TIMEOUT_SECONDS,
    DEFAULT_STEP_WAIT_SECONDS,
    AcceptOverride,
    FilterRejection,
    HookReturnError,
    MechanismSource,
    Proposal,
    Result,
    State,
    TraceRecord,
    check_hook_return,
)
from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost
from mechanisms.text import mechanism_words

DETAIL_CHARS = 300


class Effect(TypedDict):
    mechanism: str
    hook: str
    effect: str
    detail: str
    iteration: int | None


class Deactivation(TypedDict):
    mechanism: str
    hook: str
    reason: str  # the system's finding, then the mechanism's own words quoted
    iteration: int | None
    kind: str  # what was found: a HostError/MechanismCallError kind, "bad_return", "load", "replay", "engine"


# Findings about what the mechanism's code did (as opposed to the machine: "isolation", "start",
# "closed"). A mechanism that passed its dry run and then does one of these at runtime behaved
# differently from its dry run.
MISBEHAVIOUR_KINDS = frozenset({"exception", "forbidden", "bad_return", "missing_hook", "crashed", "timeout",
                                "protocol", "outside_call", "load", "replay"})


class Warning_(TypedDict):
    mechanism: str
    hook: str
    detail: str
    iteration: int | None


class _HookFailed(Exception):
    """Internal: the hook call failed and its mechanism has been deactivated."""


def _with_words(finding: str, words: str) -> str:
    quoted = mechanism_words(words)
    return f"{finding}; {quoted}" if quoted else finding


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 3] + "..."


class MechanismRuntime:
    """Calls the active mechanisms' hooks in activation order and records what they changed.

    Each mechanism runs in its own confined host process, so attribution is by construction: a
    value is credited to the mechanism whose host returned it, and a host that misbehaves (dies,
    hangs, breaks the protocol) takes down only its own mechanism.
    """

    def __init__(self, mechanisms: Sequence[MechanismSource], *, trace: Iterable[TraceRecord] = (),
                 state: State | None = None, host_factory: Callable[[], MechanismHost] | None = None,
                 time_limit_per_call: float = DEFAULT_CALL_TIMEOUT_SECONDS,
                 step_wait_seconds: float = DEFAULT_STEP_WAIT_SECONDS) -> None:
        """Start one host per mechanism (activation order), load it and replay ``trace`` through it."""
        self.host_factory = host_factory or (
            lambda: MechanismHost(time_limit_per_call=time_limit_per_call, wait=False,
                                  wait_budget=step_wait_seconds))
        self.sources = {m["name"]: m for m in mechanisms}
        self.active: list[str] = [m["name"] for m in mechanisms]
        self.hosts: dict[str, MechanismHost] = {}
        self.hooks: dict[str, list[str]] = {}
        self.trace: list[TraceRecord] = list(trace)
        self.last_state = state
        self.hook_calls: dict[str, dict[str, int]] = {m["name"]: {} for m in mechanisms}
        self.replay_calls: dict[str, int] = {m["name"]: 0 for m in mechanisms}
        self.effects: list[Effect] = []
        self.deactivated: list[Deactivation] = []
        self.warnings: list[Warning_] = []
        # Hosts start concurrently (a run with three mechanisms waits for one start, not three), but
        # are spawned here: a host dies with the thread that spawned it.
        spawned: dict[str, MechanismHost | HostError] = {}
        for name in self.active:
            try:
                spawned[name] = self.host_factory()
            except HostError as error:
                spawned[name] = error
        with ThreadPoolExecutor(max_workers=max(1, len(self.active))) as pool:
            outcomes = list(pool.map(self._start_one, list(self.active), [spawned[n] for n in self.active]))
        for name, (host, hooks, replayed, failure) in zip(list(self.active), outcomes, strict=True):
            # The newest record reaches the mechanism for the first time in this step: a live
            # on_result call (a mechanism that lived through the run got it once, after that
            # iteration); the older ones are the replay that rebuilds its state.
            live = 1 if failure is None and replayed and replayed == len(self.trace) else 0
            if live:
                self.hook_calls[name]["on_result"] = 1
            self.replay_calls[name] = replayed - live
            if host is not None:
                self.hosts[name] = host
                self.hooks[name] = hooks
            if failure is not None:
                self.deactivate(name, failure[0], failure[1], failure[2])

    @classmethod
    def start(cls, mechanisms: Sequence[MechanismSource], trace: Sequence[TraceRecord], state: State, *,
              time_limit_per_call: float = DEFAULT_CALL_TIMEOUT_SECONDS,
              host_factory: Callable[[], MechanismHost] | None = None,
              step_wait_seconds: float = DEFAULT_STEP_WAIT_SECONDS) -> MechanismRuntime:
        """Start the hosts, load the mechanisms and rebuild their state by replaying the trace."""
        return cls(mechanisms, trace=trace, state=state, host_factory=host_factory,
                   time_limit_per_call=time_limit_per_call, step_wait_seconds=step_wait_seconds)

    def _start_one(self, name: str, host: MechanismHost | HostError
                   ) -> tuple[MechanismHost | None, list[str], int, tuple[str, str, str] | None]:
        """(host or None, hooks, on_result calls replayed, (hook, reason, kind) if the mechanism must go)."""
        if isinstance(host, HostError):
            return None, [], 0, ("load", f"host {host.kind}: {host}", host.kind)
        try:
            host.wait_until_ready()
            report = host.load([self.sources[name]])
            if name in report["errors"]:
                host.close()
                return None, [], 0, ("load", _with_words("failed to load", report["errors"][name]), "load")
            hooks = report["loaded"].get(name, [])
            if not (self.trace and "on_result" in hooks):
                return host, hooks, 0, None
            replay = host.replay(self.trace, self._replay_state())
            failure = replay["errors"].get(name)
            if failure is None:
                return host, hooks, len(self.trace), None
            host.close()
            kind = failure["kind"] if failure["kind"] in MISBEHAVIOUR_KINDS else "replay"
            return None, hooks, failure["index"] + 1, (
                "on_result", _with_words(f"replay failed at record {failure['index']} ({kind})", failure["error"]),
                kind)
        except HostError as error:
            host.close()
            return None, [], 0, (error.hook or "load", f"host {error.kind}: {error}", error.kind)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()

    def __enter__(self) -> MechanismRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def fired(self) -> set[str]:
        """Mechanisms that changed at least one decision so far."""
        return {effect["mechanism"] for effect in self.effects}

    def deactivate(self, name: str, hook: str, reason: str, kind: str = "engine") -> None:
        """Remove a mechanism for the rest of the run (also the engine's kill switch).

        ``reason`` is the system's own sentence; mechanism text in it must come through mechanism_words.
        """
        if name in self.active:
            self.active.remove(name)
            host = self.hosts.pop(name, None)
            if host is not None:
                host.close()
            iteration = self.last_state["iteration"] if self.last_state else None
            self.deactivated.append({"mechanism": name, "hook": hook, "reason": reason, "iteration": iteration,
                                     "kind": kind})

    def check_hosts(self) -> None:
        """At the end of a step: deactivate each mechanism whose host died, or ran, after its last call."""
        for name in list(self.active):
            host = self.hosts.get(name)
            if host is None:
                continue
            try:
                host.check_between_calls((name, "between calls"))
            except HostError as error:
                self.deactivate(name, "between calls", f"host {error.kind}: {error}", error.kind)

    def _replay_state(self) -> State:
        if self.last_state is not None:
            return self.last_state
        return {"iteration": len(self.trace), "search_space": [], "frozen": [], "guidance": "", "config": {},
                "best": {"val_bpb": None, "iteration": None}, "baseline": {"val_bpb": None, "noise_sd": None},
                "trace": list(self.trace)}

    # -- one hook call ---------------------------------------------------------------------------

    def _count(self, name: str, hook: str) -> None:
        per_hook = self.hook_calls.setdefault(name, {})
        per_hook[hook] = per_hook.get(hook, 0) + 1

    def _with_hook(self, hook: str) -> list[str]:
        return [name for name in self.active if hook in self.hooks.get(name, [])]

    def _call(self, name: str, hook: str, *args: Any) -> Any:
        """Call a hook and return its normalized value; on any failure deactivate and raise _HookFailed."""
        self._count(name, hook)
        try:
            return check_hook_return(hook, self.hosts[name].call(name, hook, *args))
        except MechanismCallError as error:
            self.deactivate(name, hook, f"{error.kind}: {error}", error.kind)
        except HookReturnError as error:
            self.deactivate(name, hook, f"bad_return: {error}", "bad_return")
        except HostError as error:
            self.deactivate(name, hook, f"host {error.kind}: {error}", error.kind)
        raise _HookFailed(name)

    def _record(self, name: str, hook: str, effect: str, detail: Any, state: State) -> None:
        self.effects.append({"mechanism": name, "hook": hook, "effect": effect, "detail": _short(detail),
                             "iteration": state.get("iteration")})

    def _warn(self, name: str, hook: str, detail: str, state: State) -> None:
        self.warnings.append({"mechanism": name, "hook": hook, "detail": detail, "iteration": state.get("iteration")})

    # -- the iteration's hook points -------------------------------------------------------------

    def prompt_sections(self, state: State) -> list[str]:
        self.last_state = state
        sections: list[str] = []
        for name in self._with_hook("prompt_sections"):
            try:
                added: list[str] = self._call(name, "prompt_sections", state)
            except _HookFailed:
                continue
            if added:
                sections += added
                self._record(name, "prompt_sections", "prompt_added", "\n".join(added), state)
        return sections

    def restrict(self, state: State, all_params: Iterable[str]) -> set[str] | None:
        """The parameters that may change now, or None when no mechanism narrowed the set."""
        self.last_state = state
        allowed = set(all_params)
        narrowed = False
        for name in self._with_hook("restrict"):
            try:
                names: list[str] | None = self._call(name, "restrict", state)
            except _HookFailed:
                continue
            if names is None:
                continue
            unknown = sorted(set(names) - allowed)
            kept = allowed & set(names)
            if not kept:
                named = json.dumps(sorted(names))[:300]  # the mechanism's strings, quoted
                self._warn(name, "restrict", f"restriction to the mechanism's names {named} leaves no parameter "
                                             f"to change (allowed now: {sorted(allowed)}); ignored", state)
                continue
            if unknown:
                self._warn(name, "restrict", f"the mechanism's names not changeable now were ignored: "
                                             f"{json.dumps(unknown)[:300]}", state)
            if kept != allowed:
                narrowed = True
                self._record(name, "restrict", "restricted", sorted(kept), state)
                allowed = kept
        return allowed if narrowed else None

    def propose(self, state: State) -> tuple[Proposal | None, str | None]:
        """The first mechanism (in activation order) that proposes replaces the agent's proposal."""
        self.last_state = state
        for name in self._with_hook("propose"):
            try:
                proposal: Proposal | None = self._call(name, "propose", state)
            except _HookFailed:
                continue
            if proposal is not None:
                self._record(name, "propose", "proposal_replaced", proposal, state)
                return proposal, name
        return None, None

    def filter(self, proposal: Proposal, state: State) -> tuple[bool, str | None, str | None]:
        """(accepted, rejection reason, rejecting mechanism): the first rejection wins."""
        self.last_state = state
        for name in self._with_hook("filter"):
            try:
                verdict: FilterRejection | None = self._call(name, "filter", proposal, state)
            except _HookFailed:
                continue
            if verdict is not None:
                self._record(name, "filter", "proposal_rejected", verdict["reject"], state)
                return False, verdict["reject"], name
        return True, None, None

    def accept(self, result: Result, default_keep: bool, state: State) -> tuple[bool, str | None, str]:
        """(keep, overriding mechanism, reason): the first override that differs from the default wins."""
        self.last_state = state
        for name in self._with_hook("accept"):
            try:
                override: AcceptOverride | None = self._call(name, "accept", result, state)
            except _HookFailed:
                continue
            if override is None or override["keep"] == default_keep:
                continue
            if override["keep"] and result.get("val_bpb") is None:
                self._warn(name, "accept", "asked to keep a result without val_bpb (a crash); ignored", state)
                continue
            self._record(name, "accept", "acceptance_overridden",
                         f"keep={override['keep']} (default {default_keep}): {override['reason']}", state)
            return override["keep"], name, override["reason"]
        return default_keep, None, ""

    def observe(self, record: TraceRecord, state: State) -> None:
        """Show a finished iteration to every mechanism (state: as before the record)."""
        self.last_state = state
        self.trace.append(record)
        for name in self._with_hook("on_result"):
            with contextlib.suppress(_HookFailed):
                self._call(name, "on_result", record, state)
