"""Between the engine and the sandboxed mechanisms: which are active, and what they did.

The active attachments' code runs in a MechanismRuntime (a sandboxed host process, see
mechanisms/sandbox/host.py) rebuilt for every step by replaying the run's trace. After the step,
the hook counts and the decisions each mechanism changed are stored on the iteration and
added to the attachment's totals; a mechanism whose hook failed is deactivated with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from django.db.models import F

from mechanisms.models import AttachmentStatus, MechanismAttachment
from mechanisms.protocol import MechanismSource
from mechanisms.runtime import MechanismRuntime

from ..models import Run
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
    return f"{attachment.mechanism.name}#{attachment.pk}"


def active_attachments(run: Run) -> list[MechanismAttachment]:
    return list(
        MechanismAttachment.objects.filter(run=run, status=AttachmentStatus.ACTIVE)
        .select_related("mechanism")
        .order_by("activated_at", "pk")
    )


@contextmanager
def open_runtime(run: Run, state: RunState) -> Iterator[Any]:
    attachments = active_attachments(run)
    if not attachments:
        yield NoMechanisms()
        return
    sources: list[MechanismSource] = [
        {
            "name": runtime_name(a),
            "class_name": a.mechanism.spec.get("class_name", a.mechanism.name),
            "code": a.mechanism.code,
        }
        for a in attachments
    ]
    view = state.view()
    replay_state: Any = {**view, "trace": []}
    runtime = MechanismRuntime.start(sources, view["trace"], replay_state)
    try:
        yield runtime
    finally:
        runtime.close()


def record_runtime_outcome(run: Run, runtime: Any, iteration_index: int) -> dict[str, Any]:
    """Store attribution on the attachments; return the iteration's mechanism fields."""
    from mechanisms.lifecycle import transition

    if isinstance(runtime, NoMechanisms):
        return {"mechanism_effects": [], "hook_calls": {}}
    by_name = {runtime_name(a): a for a in active_attachments(run)}
    effects = [e for e in runtime.effects if e.get("iteration") in (None, iteration_index)]
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
            reason = f"hook {failure['hook']} failed at runtime: {failure['reason']}"
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
