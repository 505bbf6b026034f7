"""Behaviour watch after approval: a mechanism that acts at runtime unlike its dry run is switched off.

A dry run replays recorded traces through a fresh host for a few seconds. It cannot see what a
mechanism does only later, only in a real run or only after many calls (a time bomb behaves in the
dry run and attacks in the run), so approval is not the end of the watch. At runtime, a mechanism
whose dry run was clean and which then has an operation refused, crashes, hangs, breaks the
protocol, runs outside a call, or suddenly changes every decision where its dry run changed few,
is deactivated with the finding and listed in the review queue as "misbehaved after approval".

Plain data in, plain data out: the engine (``runs``) gives the attachment's dry-run report and its
recent iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechanisms.runtime import MISBEHAVIOUR_KINDS

MISBEHAVED_AFTER_APPROVAL = "misbehaved after approval"
WATCH_KIND = "decisions"  # the deactivation kind of a sudden_change finding
# A hook that changed the decision at each of this many calls in a row...
SUDDEN_WINDOW = 6
# ...where its dry run changed at most this share of the decisions it was asked about.
SUDDEN_DRY_RUN_SHARE = 0.5
EFFECT_OF_HOOK = {"prompt_sections": "prompt_added", "restrict": "restricted", "propose": "proposal_replaced",
                  "filter": "proposal_rejected", "accept": "acceptance_overridden"}

WHAT_A_DRY_RUN_CANNOT_PROVE = (
    "It replays recorded traces for a few seconds: code that waits for a later date, a later "
    "iteration, many calls or a long run before it acts (a time bomb) passes it cleanly.",
    "It shows the mechanism what a real run shows it, in the same shape, so the mechanism cannot "
    "tell the two apart by its inputs; it can still count its calls or measure time.",
    "It proves the code behaved on these traces, not on the run it will join: values the traces "
    "never reach are untested.",
    "So approval is not the end of the watch: at runtime a refused operation, a crash, a hang, a "
    "broken protocol, CPU used outside a call, or a hook that suddenly changes every decision "
    "deactivates the mechanism and lists it in the review queue as \"misbehaved after approval\".",
)


def misbehaviour(kind: str, hook: str, reason: str) -> str | None:
    """The watch's finding for a runtime deactivation, or None when the machine (not the code) failed."""
    if kind == WATCH_KIND:
        return reason  # already the watch's own finding
    if kind not in MISBEHAVIOUR_KINDS:
        return None
    return f"{MISBEHAVED_AFTER_APPROVAL}: hook {hook} at runtime: {reason}"


def dry_run_share(dry_run_report: dict[str, Any], hook: str) -> tuple[int, int] | None:
    """(decisions the hook changed, times it was asked) over the dry run's traces, or None if unknown."""
    traces = [t for t in dry_run_report.get("traces", []) if isinstance(t, dict) and "hook_calls" in t]
    calls = sum(int(t["hook_calls"].get(hook, 0)) for t in traces)
    if not traces or calls == 0:
        return None
    changed = sum(int(t.get("changed", {}).get(EFFECT_OF_HOOK[hook], 0)) for t in traces)
    return changed, calls


def sudden_change(name: str, dry_run_report: dict[str, Any],
                  recent: Sequence[tuple[dict[str, dict[str, int]], list[dict[str, Any]]]]) -> str | None:
    """The finding when a hook changed every decision of its last SUDDEN_WINDOW calls, unlike its dry run.

    ``recent``: (hook_calls, mechanism_effects) of the run's latest iterations, newest last.
    """
    for hook, effect in EFFECT_OF_HOOK.items():
        share = dry_run_share(dry_run_report, hook)
        if share is None or share[0] > SUDDEN_DRY_RUN_SHARE * share[1]:
            continue
        calls = changed = 0
        for hook_calls, effects in reversed(recent):
            asked = int(hook_calls.get(name, {}).get(hook, 0))
            did = sum(1 for e in effects if e.get("mechanism") == name and e.get("effect") == effect)
            if asked == 0:
                continue
            if did < asked:
                break
            calls, changed = calls + asked, changed + did
        if calls >= SUDDEN_WINDOW:
            return (f"{MISBEHAVED_AFTER_APPROVAL}: {hook}() changed the decision at each of its last {calls} calls; "
                    f"in its dry run it changed {share[0]} of {share[1]}")
    return None
