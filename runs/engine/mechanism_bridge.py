"""Between the engine and the sandboxed mechanisms: which are active, and what they did.

At the start of every step, mechanisms a reviewer added from the library join the run and approved
ones become active (``attach_library_mechanisms``, ``activate_approved_mechanisms``).

The active attachments' code runs in a MechanismRuntime (a sandboxed host process, see
mechanisms/sandbox/host.py) rebuilt for every step by replaying the run's trace. After the step,
the hook counts and the decisions each mechanism changed are stored on the iteration and
added to the attachment's totals; a mechanism whose hook failed is deactivated with the reason.
Before that, every host is checked once more (``check_hosts``): a host that died, or ran, after its
last call of the step is noticed now, not at the next step. A deactivation for what the code did,
or a hook that suddenly changes every decision unlike its dry run, is recorded as "misbehaved
after approval" (see mechanisms/behaviour_watch.py), which the review queue lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from django.db.models import F
from django.utils import timezone

from mechanisms.behaviour_watch import SUDDEN_WINDOW, WATCH_KIND, misbehaviour, sudden_change
from mechanisms.lifecycle import transition
from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment
from mechanisms.protocol import MechanismSource
from mechanisms.runtime import MechanismRuntime

from ..models import Run
from . import replay
from .state import RunState


class RuntimeHandle(Protocol):
    def prompt_sections(self, state: dict[str, Any]) -> list[str]: ...
    def restrict(self, state: dict[str, Any], all_params: Iterable[str]) -> set[str] | None: ...
    def propose(self, state: dict[str, Any]) -> tuple[Any, str | None]: ...
    def filter(self, proposal: Any, state: dict[str, Any]) -> tuple[bool, str | None, str | None]: ...
    def accept(self, result: Any, default_keep: bool, state: dict[str, Any]) -> tuple[bool, str | None, str]: ...
    def deactivate(self, name: str, hook: str, reason: str) -> None: ...


class NoMechanisms:
    """The runtime of a run with no active mechanism: every hook point is a pass-through."""

    hook_calls: dict[str, dict[str, int]] = {}
    effects: list[Any] = []
    deactivated: list[Any] = []

    def prompt_sections(self, state: dict[str, Any]) -> list[str]:
        return []

    def restrict(self, state: dict[str, Any], all_params: Iterable[str]) -> set[str] | None:
        return None

    def propose(self, state: dict[str, Any]) -> tuple[Any, str | None]:
        return None, None

    def filter(self, proposal: Any, state: dict[str, Any]) -> tuple[bool, str | None, str | None]:
        return True, None, None

    def accept(self, result: Any, default_keep: bool, state: dict[str, Any]) -> tuple[bool, str | None, str]:
        return default_keep, None, ""

    def deactivate(self, name: str, hook: str, reason: str) -> None:
        return None  # nothing is active


def runtime_name(attachment: MechanismAttachment) -> str:
    return replay.runtime_name(attachment.mechanism.name, attachment.pk)


def active_attachments(run: Run) -> list[MechanismAttachment]:
    return list(
        MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.ACTIVE)
        .select_related("mechanism")
        .order_by("activated_at", "pk")
    )


def _source(name: str, mechanism: Mechanism) -> MechanismSource:
    return {"name": name, "class_name": mechanism.spec.get("class_name", mechanism.name), "code": mechanism.code}


def runtime_sources(run: Run, index: int) -> list[MechanismSource]:
    """The code of the mechanisms acting at this iteration: a run's active attachments, a replay's schedule."""
    if not run.is_replay:
        return [_source(runtime_name(a), a.mechanism) for a in active_attachments(run)]
    entries = replay.scheduled_mechanisms(run, index)
    mechanisms = Mechanism.objects.in_bulk([entry["mechanism"] for entry in entries])
    return [_source(replay.runtime_name(entry["name"], entry["attachment"]), mechanisms[entry["mechanism"]])
            for entry in entries]


@contextmanager
def open_runtime(run: Run, state: RunState) -> Iterator[Any]:
    sources = runtime_sources(run, state.next_index)
    if not sources:
        yield NoMechanisms()
        return
    view = state.view()
    replay_state: Any = {**view, "trace": []}
    runtime = MechanismRuntime.start(sources, view["trace"], replay_state)
    try:
        yield runtime
    finally:
        runtime.close()


def record_runtime_outcome(run: Run, runtime: Any, iteration_index: int) -> dict[str, Any]:
    """Store attribution on the attachments; return the iteration's mechanism fields."""
    if isinstance(runtime, NoMechanisms):
        return {"mechanism_effects": [], "hook_calls": {}}
    runtime.check_hosts()
    effects = [e for e in runtime.effects if e.get("iteration") in (None, iteration_index)]
    if run.is_replay:  # no attachments of its own: its schedule says what acts, and until when
        ended = {failure["mechanism"] for failure in runtime.deactivated}
        if ended:
            replay.end_in_replay(run, ended, iteration_index)
        return {"mechanism_effects": effects, "hook_calls": runtime.hook_calls}
    by_name = {runtime_name(a): a for a in active_attachments(run)}
    _watch_for_sudden_change(run, runtime, by_name, effects)
    for name, attachment in by_name.items():
        calls = runtime.hook_calls.get(name, {})
        totals = dict(attachment.hook_calls)
        for hook, count in calls.items():
            totals[hook] = totals.get(hook, 0) + count
        changed = sum(1 for e in effects if e["mechanism"] == name)
        MechanismAttachment.objects.filter(pk=attachment.pk).update(
            hook_calls=totals, decisions_changed=F("decisions_changed") + changed
        )
    for failure in runtime.deactivated:
        failed = by_name.get(failure["mechanism"])
        if failed is not None:
            reason = misbehaviour(failure.get("kind", "engine"), failure["hook"], failure["reason"]) or (
                f"hook {failure['hook']} failed at runtime: {failure['reason']}")
            transition(
                failed,
                (AttachmentStatus.ACTIVE,),
                AttachmentStatus.DEACTIVATED,
                note=reason,
                at_iteration=iteration_index,
                deactivated_at_iteration=iteration_index,
                status_detail=reason,
            )
    return {"mechanism_effects": effects, "hook_calls": runtime.hook_calls}


def _watch_for_sudden_change(run: Run, runtime: Any, by_name: dict[str, MechanismAttachment],
                             effects: list[dict[str, Any]]) -> None:
    """Deactivate a mechanism whose hook changed every decision of its latest calls, unlike its dry run."""
    earlier = list(run.iteration_set.order_by("-index").values_list("hook_calls", "mechanism_effects")[:SUDDEN_WINDOW])
    recent = [*reversed(earlier), (runtime.hook_calls, effects)]
    for name, attachment in by_name.items():
        if name not in runtime.active:
            continue
        finding = sudden_change(name, attachment.dry_run_report or {}, recent)
        if finding is not None:
            runtime.deactivate(name, "behaviour watch", finding, WATCH_KIND)


def attach_library_mechanisms(run: Run) -> None:
    """Mechanisms a reviewer added to the experiment from the library join each run at its next step."""
    attached = MechanismAttachment.objects.filter(run=run).values_list("mechanism_id", flat=True)
    for mechanism in run.experiment.library_mechanisms.filter(passed_ladder=True).exclude(pk__in=attached):
        attachment = MechanismAttachment.objects.create(
            run=run,
            mechanism=mechanism,
            ladder=[
                {
                    "step": "library",
                    "ok": True,
                    "seconds": 0.0,
                    "detail": "passed the validation ladder when first produced; attached from the library",
                }
            ],
        )
        transition(
            attachment,
            (AttachmentStatus.VALIDATING,),
            AttachmentStatus.APPROVED,
            note="attached from the mechanism library by a reviewer",
        )


def activate_approved_mechanisms(run: Run, at_iteration: int) -> None:
    """Approved mechanisms become active at the iteration boundary (the start of this step)."""
    for attachment in MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.APPROVED):
        transition(
            attachment,
            (AttachmentStatus.APPROVED,),
            AttachmentStatus.ACTIVE,
            note="activated at iteration boundary",
            at_iteration=at_iteration,
            activated_at_iteration=at_iteration,
            activated_at=timezone.now(),
        )
