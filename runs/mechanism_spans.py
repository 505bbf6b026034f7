"""Where each mechanism acted in a run, and which replays a run has: read by the engine and the analysis.

A run's mechanisms are its attachments that became active; each acted from the iteration it was
activated at (the first proposal for one attached as active) until the iteration after the one it was
deactivated in (a failed hook, a blocking filter) or the first iteration recorded after a kill switch.
A replay removes some of them (``replay_removed``) and keeps the others on this schedule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mechanisms.models import AttachmentStatus, MechanismAttachment, MechanismEvent

from .models import IterationKind, Run, RunKind, RunStatus

_EVER_ACTIVE = (AttachmentStatus.ACTIVE, AttachmentStatus.DEACTIVATED, AttachmentStatus.RETIRED)


@dataclass(frozen=True)
class MechanismSpan:
    """Where one mechanism acted in its run: iterations first … until − 1 (until None: to the end)."""

    attachment: int
    mechanism: int
    name: str
    first: int
    until: int | None

    def as_entry(self) -> dict[str, Any]:
        return {"attachment": self.attachment, "mechanism": self.mechanism, "name": self.name,
                "from": self.first, "until": self.until}


def runtime_name(name: str, attachment_id: int) -> str:
    """How the runtime names a mechanism (mechanism_bridge.runtime_name): the replay keeps the source's names."""
    return f"{name}#{attachment_id}"


def _first_proposal_index(run: Run) -> int:
    first = run.iteration_set.filter(kind=IterationKind.PROPOSAL).order_by("index").values_list("index", flat=True)
    found = first.first()
    if found is not None:
        return int(found)
    last = run.iteration_set.order_by("-index").values_list("index", flat=True).first()
    return 0 if last is None else int(last) + 1


def mechanism_spans(source: Run) -> list[MechanismSpan]:
    """The mechanisms that acted in a run, in activation order, with the iterations they acted in."""
    return spans_of_runs([source])[source.pk]


def spans_of_runs(sources: Iterable[Run]) -> dict[int, list[MechanismSpan]]:
    """mechanism_spans() of many runs, with one query for all their attachments."""
    by_id = {run.pk: run for run in sources}
    attachments: dict[int, list[MechanismAttachment]] = {pk: [] for pk in by_id}
    for attachment in (MechanismAttachment.objects.filter(run__in=list(by_id), status__in=_EVER_ACTIVE)
                       .exclude(activated_at__isnull=True, activated_at_iteration__isnull=True)
                       .select_related("mechanism").order_by("activated_at", "pk")):
        attachments[attachment.run_id].append(attachment)
    return {pk: _spans(by_id[pk], found) for pk, found in attachments.items()}


def _spans(source: Run, attachments: list[MechanismAttachment]) -> list[MechanismSpan]:
    spans = []
    default_first: int | None = None
    for attachment in attachments:
        first = attachment.activated_at_iteration
        if first is None:  # active from the run's start (attached as active)
            default_first = _first_proposal_index(source) if default_first is None else default_first
            first = default_first
        spans.append(MechanismSpan(attachment.pk, attachment.mechanism_id, attachment.mechanism.name, first,
                                   _until(source, attachment)))
    return spans


def _until(source: Run, attachment: MechanismAttachment) -> int | None:
    if attachment.deactivated_at_iteration is not None:
        return attachment.deactivated_at_iteration + 1  # it acted in the iteration it failed in
    if attachment.status != AttachmentStatus.DEACTIVATED:
        return None
    # A kill switch names no iteration: the mechanism stopped acting after the last iteration recorded before it.
    event = MechanismEvent.objects.filter(attachment=attachment, to_status=AttachmentStatus.DEACTIVATED).first()
    if event is None:
        return None
    after = source.iteration_set.filter(created_at__gt=event.created_at).order_by("index").first()
    return after.index if after is not None else None


def removal_sets(spans: list[MechanismSpan]) -> list[tuple[int, ...]]:
    """Without each mechanism, and, where there are several, without all of them (credits need not add up)."""
    sets: list[tuple[int, ...]] = [(span.attachment,) for span in spans]
    if len(spans) > 1:
        sets.append(tuple(span.attachment for span in spans))
    return sets


def replays_of(source: Run) -> list[Run]:
    return list(Run.all_objects.filter(replay_of=source, kind=RunKind.REPLAY).order_by("pk"))


def live_replays_of(source: Run) -> list[Run]:
    """The replays that finished or may still finish: a failed or cancelled one is made again when offered."""
    return [r for r in replays_of(source) if r.status not in (RunStatus.FAILED, RunStatus.CANCELLED)]


def removed_key(replay: Run) -> tuple[int, ...]:
    return tuple(sorted(int(entry["attachment"]) for entry in replay.replay_removed))
