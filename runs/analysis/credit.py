"""Counterfactual credit: what each mechanism earned its run, from the run's paired replays.

Sign, everywhere: credit = final best val_bpb of the replay without the mechanism − final best
val_bpb of the real run. Lower val_bpb is better, so a positive credit means the run did better
with the mechanism (it helped), a negative one that it did worse (it hurt), and exactly 0 that the
replay without it took the same decisions. The confirmed credit is the same difference of the two
runs' confirmed Δ (their best re-trained on the same fresh seeds), where both have one.

Credits need not add up: two mechanisms can each be needed (or each be redundant). With several,
the run's page shows "without all" beside "without each", and the difference as the interaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..mechanism_spans import MechanismSpan, mechanism_spans, removed_key, spans_of_runs
from ..models import Iteration, Run, RunKind, RunStatus
from . import stats
from .confirmed import confirmed_deltas

FLAG_MIN_RUNS = 5  # a mechanism with credit ≤ 0 over at least this many runs is flagged in the library
ADDS_UP = 1e-9  # val_bpb: credits whose sum differs from "without all" by less than this add up


@dataclass(frozen=True)
class ReplayOutcome:
    replay_id: int
    removed: tuple[int, ...]  # attachment ids
    names: list[str]
    status: str
    from_iteration: int | None
    final_best: float | None
    credit: float | None
    confirmed_credit: float | None
    diverged_at: int | None  # the first iteration whose decision differs from the real run's
    llm_diverged_at: int | None  # the first iteration whose LLM prompt differed (answered anew from there)

    @property
    def finished(self) -> bool:
        return self.status == RunStatus.COMPLETED

    def as_dict(self) -> dict[str, Any]:
        return {"replay": self.replay_id, "removed": self.names, "status": self.status,
                "from_iteration": self.from_iteration, "final_best": self.final_best, "credit": self.credit,
                "confirmed_credit": self.confirmed_credit, "diverged_at": self.diverged_at,
                "llm_diverged_at": self.llm_diverged_at}


@dataclass(frozen=True)
class MechanismCredit:
    span: MechanismSpan
    outcome: ReplayOutcome | None  # None: no replay without it yet


@dataclass
class RunCredits:
    run: Run
    baseline: float | None
    final_best: float | None
    mechanisms: list[MechanismCredit] = field(default_factory=list)
    without_all: ReplayOutcome | None = None  # with one mechanism: the replay without it

    @property
    def complete(self) -> bool:
        return bool(self.mechanisms) and all(m.outcome is not None and m.outcome.finished for m in self.mechanisms) \
            and self.without_all is not None and self.without_all.finished

    @property
    def interaction(self) -> float | None:
        """Without all minus the sum of without each: 0 when the credits add up."""
        if not self.complete or len(self.mechanisms) < 2:
            return None
        assert self.without_all is not None
        credits = [m.outcome.credit for m in self.mechanisms if m.outcome is not None]
        if self.without_all.credit is None or any(c is None for c in credits):
            return None
        return self.without_all.credit - sum(c for c in credits if c is not None)

    def waterfall(self) -> list[dict[str, Any]]:
        """Bars from the baseline through "Level 1 alone" and each credit to the run's final best."""
        if not self.complete or self.baseline is None or self.final_best is None:
            return []
        assert self.without_all is not None and self.without_all.final_best is not None
        alone = self.without_all.final_best
        bars = [{"label": "baseline", "kind": "total", "value": self.baseline, "start": self.baseline,
                 "end": self.baseline},
                {"label": _alone_label(self.run), "kind": "step", "value": alone - self.baseline,
                 "start": self.baseline, "end": alone, "diverged_at": self.without_all.diverged_at,
                 "llm_diverged_at": self.without_all.llm_diverged_at}]
        level = alone
        for item in self.mechanisms:
            assert item.outcome is not None and item.outcome.credit is not None
            end = level - item.outcome.credit
            bars.append({"label": item.span.name, "kind": "credit", "value": item.outcome.credit, "start": level,
                         "end": end, "diverged_at": item.outcome.diverged_at,
                         "llm_diverged_at": item.outcome.llm_diverged_at, "from_iteration": item.span.first})
            level = end
        interaction = self.interaction
        if interaction is not None and abs(interaction) > ADDS_UP:
            bars.append({"label": "interaction (credits do not add up)", "kind": "interaction",
                         "value": interaction, "start": level, "end": self.final_best})
        bars.append({"label": "final best", "kind": "total", "value": self.final_best, "start": self.final_best,
                     "end": self.final_best})
        return bars

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.pk, "sign": "credit = replay's final best − run's final best; positive = it helped",
            "baseline": self.baseline, "final_best": self.final_best, "complete": self.complete,
            "mechanisms": [{"name": m.span.name, "mechanism": m.span.mechanism, "attachment": m.span.attachment,
                            "from_iteration": m.span.first, "until": m.span.until,
                            **({"credit": None} if m.outcome is None else m.outcome.as_dict())}
                           for m in self.mechanisms],
            "without_all": self.without_all.as_dict() if self.without_all else None,
            "level1_alone": self.without_all.final_best if self.without_all else None,
            "interaction": self.interaction,
        }


def _alone_label(run: Run) -> str:
    return "Level 1 + 1.5 alone" if run.level_strategy else "Level 1 alone"


def diverged_at(source: Sequence[Iteration], replay: Sequence[Iteration], start: int) -> int | None:
    """The first iteration from `start` on whose config or decision differs between the two runs."""
    theirs = {it.index: it for it in source if it.index >= start}
    ours = {it.index: it for it in replay if it.index >= start}
    for index in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(index), ours.get(index)
        # Configs are stored in their JSON form (validated, typed): equal dicts are the same config.
        if a is None or b is None or a.status != b.status or a.config != b.config:
            return index
    return None


def _credit(replay_value: float | None, source_value: float | None) -> float | None:
    if replay_value is None or source_value is None:
        return None
    return replay_value - source_value


def outcomes_for(sources: Iterable[Run]) -> dict[int, list[ReplayOutcome]]:
    """Every replay of these runs, with its credit, by source run id (few queries for many runs)."""
    by_id = {run.pk: run for run in sources}
    replays = list(Run.all_objects.filter(replay_of__in=list(by_id), kind=RunKind.REPLAY)
                   .select_related("experiment").order_by("pk"))
    if not replays:
        return {pk: [] for pk in by_id}
    confirmed = confirmed_deltas([*by_id.values(), *replays])
    iterations: dict[int, list[Iteration]] = defaultdict(list)
    for iteration in Iteration.objects.filter(run__in=[*by_id, *(r.pk for r in replays)]).order_by("index"):
        iterations[iteration.run_id].append(iteration)
    found: dict[int, list[ReplayOutcome]] = {pk: [] for pk in by_id}
    for replay in replays:
        source = by_id[replay.replay_of_id]  # type: ignore[index]
        finished = replay.status == RunStatus.COMPLETED
        theirs, ours = confirmed.get(source.pk), confirmed.get(replay.pk)
        found[source.pk].append(ReplayOutcome(
            replay_id=replay.pk, removed=removed_key(replay), names=[e["name"] for e in replay.replay_removed],
            status=replay.status, from_iteration=replay.replay_from_iteration,
            final_best=replay.best_val_bpb if finished else None,
            credit=_credit(replay.best_val_bpb, source.best_val_bpb) if finished else None,
            confirmed_credit=_credit(ours.delta, theirs.delta) if finished and ours and theirs else None,
            diverged_at=diverged_at(iterations[source.pk], iterations[replay.pk], replay.replay_from_iteration or 0),
            llm_diverged_at=replay.replay_llm_diverged_at,
        ))
    return found


def run_credits(run: Run, outcomes: list[ReplayOutcome] | None = None,
                spans: list[MechanismSpan] | None = None) -> RunCredits:
    outcomes = outcomes if outcomes is not None else outcomes_for([run])[run.pk]
    by_removed = {o.removed: o for o in outcomes}
    spans = spans if spans is not None else mechanism_spans(run)
    credits = RunCredits(run=run, baseline=run.baseline_val_bpb, final_best=run.best_val_bpb,
                         mechanisms=[MechanismCredit(s, by_removed.get((s.attachment,))) for s in spans])
    if spans:
        credits.without_all = by_removed.get(tuple(sorted(s.attachment for s in spans)))
    return credits


# -- over many runs: the library, the review page, the comparison page ------------------------


@dataclass(frozen=True)
class CreditSummary:
    credit: stats.Summary
    confirmed: stats.Summary

    @property
    def flagged(self) -> bool:
        """Credit ≤ 0 on average over at least FLAG_MIN_RUNS runs: it has not earned its place."""
        return self.credit.n >= FLAG_MIN_RUNS and self.credit.mean is not None and self.credit.mean <= 0

    def as_dict(self) -> dict[str, Any]:
        return {"credit": self.credit.as_dict(), "confirmed_credit": self.confirmed.as_dict(), "flagged": self.flagged,
                "sign": "positive = the mechanism helped (lower val_bpb)"}


def _summary(values: list[tuple[float | None, float | None]]) -> CreditSummary:
    return CreditSummary(stats.summarize([v for v, _ in values if v is not None]),
                         stats.summarize([c for _, c in values if c is not None]))


def single_credits(runs: Iterable[Run]) -> list[tuple[Run, MechanismSpan, ReplayOutcome]]:
    """Each finished single-mechanism replay of these (search) runs, with the mechanism it removed."""
    runs = list(runs)
    outcomes = outcomes_for(runs)
    all_spans = spans_of_runs(runs)
    found = []
    for run in runs:
        spans = {s.attachment: s for s in all_spans[run.pk]}
        for outcome in outcomes[run.pk]:
            if outcome.finished and len(outcome.removed) == 1 and outcome.removed[0] in spans:
                found.append((run, spans[outcome.removed[0]], outcome))
    return found


def _runs_with_replays(**filters: Any) -> list[Run]:
    sources = Run.all_objects.filter(kind=RunKind.REPLAY, **filters).values_list("replay_of_id", flat=True)
    return list(Run.objects.filter(pk__in=sources).select_related("experiment"))


def credit_by_mechanism() -> dict[int, CreditSummary]:
    """Every mechanism's credit over the runs where it was active (mechanism id → summary)."""
    values: dict[int, list[tuple[float | None, float | None]]] = defaultdict(list)
    for _, span, outcome in single_credits(_runs_with_replays()):
        values[span.mechanism].append((outcome.credit, outcome.confirmed_credit))
    return {mechanism: _summary(found) for mechanism, found in values.items()}


def credit_of_kind(name: str) -> CreditSummary:
    """The credit mechanisms of this name (its kind) earned in earlier runs."""
    found = single_credits(_runs_with_replays())
    values = [(o.credit, o.confirmed_credit) for _, span, o in found if span.name == name]
    return _summary(values)


def credits_of_runs(runs: Iterable[Run]) -> dict[int, RunCredits]:
    """The credits of the runs that have replays (a few queries however many runs)."""
    runs = [run for run in runs if run.kind == RunKind.SEARCH]
    outcomes = outcomes_for(runs)
    replayed = [run for run in runs if outcomes[run.pk]]
    spans = spans_of_runs(replayed) if replayed else {}
    return {run.pk: run_credits(run, outcomes[run.pk], spans[run.pk]) for run in replayed}


def group_credit(runs: Iterable[Run], credits: dict[int, RunCredits]) -> dict[str, Any]:
    """Over a group's runs: each run's credit of all its mechanisms together (the replay without any of
    them), its summary, and the credit of each mechanism kind (name) over the runs where it was active."""
    by_kind: dict[str, list[tuple[float | None, float | None]]] = defaultdict(list)
    totals: dict[int, tuple[float | None, float | None]] = {}
    for run in runs:
        found = credits.get(run.pk)
        if found is None:
            continue
        for item in found.mechanisms:
            if item.outcome is not None and item.outcome.finished:
                by_kind[item.span.name].append((item.outcome.credit, item.outcome.confirmed_credit))
        if found.without_all is not None and found.without_all.finished:
            totals[run.pk] = (found.without_all.credit, found.without_all.confirmed_credit)
    return {
        "runs": {pk: {"credit": c, "confirmed_credit": cc} for pk, (c, cc) in totals.items()},
        "all_mechanisms": _summary(list(totals.values())).as_dict(),
        "by_kind": {name: _summary(values).as_dict() for name, values in sorted(by_kind.items())},
    }


def credit_for_review(sender: Any, attachment: Any, **kwargs: Any) -> dict[str, Any]:
    """A review page's receiver (mechanisms.signals.review_context): its kind's earlier credit."""
    name = attachment.mechanism.name
    return {"kind_name": name, "kind_credit": credit_of_kind(name), "kind_flag_min_runs": FLAG_MIN_RUNS}
