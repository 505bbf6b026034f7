"""Paired replay: a finished run's search done again without some of its mechanisms.

A mechanism's counterfactual credit needs the run it was in and the same run without it, with
everything else held equal. A replay is a Run of kind "replay" (never counted by ``Run.objects``,
so no group statistic, list or export sees it) that starts from a copy of its source run up to the
iteration the removed mechanism became active, and from there is stepped by the ordinary engine:

- the same training seeds (the run's seed, as the source) and the same objective and budget (the
  source's experiment); a (config, seed) the source already measured is not trained again, its
  recorded value is reused (the trainer is deterministic per seed), so a replay costs only the
  trainings after it diverged;
- the same agent randomness: the built-in agent's streams are keyed by (run seed, iteration,
  purpose) (``agents/base.keyed_rng``), so a removed mechanism shifts no later draw; an LLM agent is
  answered from the source's recorded replies while its prompts match them, and from the first
  prompt that differs the replay says "diverged from here" and asks the endpoint (``agents/replayed.py``);
- the same mechanisms, minus the removed ones, acting over the same iterations as in the source
  (``replay_schedule``); Level 2 does not run again (its outcome is that schedule), Level 1.5 does.

Mechanism code still runs only in the sandbox host: the engine opens the replay's runtime from the
schedule exactly as it opens a run's from its attachments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import current_app
from django.db import transaction

from trainer.outcomes import TrainingSummary

from ..mechanism_spans import (
    live_replays_of,
    mechanism_spans,
    removal_sets,
    removed_key,
    runtime_name,
)
from ..models import Confirmation, Iteration, IterationKind, Objective, OuterCycle, Run, RunKind, RunStatus
from .acceptance import REEVALUATION_SEED_OFFSET
from .state import RunState, config_key

logger = logging.getLogger(__name__)



def replay_needs_trainings(source: Run) -> bool:
    return source.experiment.objective != Objective.SURROGATE


def planned_trainings(source: Run) -> int:
    """At most how many trainings the missing replays of a run cost (fewer where they follow the source)."""
    spans = mechanism_spans(source)
    done = {removed_key(r) for r in live_replays_of(source)}
    total_iterations = source.experiment.iterations
    proposals_before = {span.attachment: _proposals_before(source, span.first) for span in spans}
    total = 0
    for removed in removal_sets(spans):
        if tuple(sorted(removed)) in done:
            continue
        start = min(proposals_before[a] for a in removed)
        total += max(0, total_iterations - start) + source.experiment.confirmation_repeats
    return total


def _proposals_before(source: Run, index: int) -> int:
    return source.iteration_set.filter(kind=IterationKind.PROPOSAL, index__lt=index).count()


@transaction.atomic
def create_replay(source: Run, removed: Iterable[int]) -> Run:
    """A queued replay of `source` without the mechanisms attached as `removed` (attachment ids)."""
    if source.is_replay:
        raise ValueError("a replay is not replayed")
    spans = mechanism_spans(source)
    by_attachment = {span.attachment: span for span in spans}
    removed_spans = [by_attachment[a] for a in removed if a in by_attachment]
    if not removed_spans:
        raise ValueError(f"run {source.pk} has no active mechanism among attachments {sorted(removed)}")
    start = min(span.first for span in removed_spans)
    kept = [span for span in spans if span not in removed_spans]
    replay = Run.all_objects.create(
        experiment=source.experiment, group=source.group, repeat=source.repeat, seed=source.seed,
        level_strategy=source.level_strategy, level_research=False, random_control=source.random_control,
        kind=RunKind.REPLAY, replay_of=source, replay_from_iteration=start,
        replay_removed=[{"attachment": s.attachment, "mechanism": s.mechanism, "name": s.name} for s in removed_spans],
        replay_schedule=[span.as_entry() for span in kept],
        baseline_val_bpb=source.baseline_val_bpb, noise_sd=source.noise_sd,
        status=RunStatus.QUEUED,
        status_detail=f"replay of run {source.pk} from iteration {start} without "
                      + ", ".join(s.name for s in removed_spans),
    )
    _copy_prefix(source, replay, start)
    return replay


def _copy_prefix(source: Run, replay: Run, start: int) -> None:
    """The source's iterations before `start`, and the Level 1.5 cycles decided before that step."""
    prefix = list(source.iteration_set.filter(index__lt=start).order_by("index"))
    for iteration in prefix:
        iteration.pk = None
        iteration.run = replay
    Iteration.objects.bulk_create(prefix)
    cycles = list(OuterCycle.objects.filter(run=source, after_iteration__lt=start - 1).order_by("index"))
    for cycle in cycles:
        cycle.pk = None
        cycle.run = replay
    OuterCycle.objects.bulk_create(cycles)
    state = RunState.load(replay)
    incumbent = state.incumbent
    Run.all_objects.filter(pk=replay.pk).update(
        best_val_bpb=state.best_value, best_iteration=incumbent.index if incumbent else None,
        proposals_done=state.proposals_done,
    )


OFFER_TASK = "runs.tasks.offer_replays"


def offer_when_finished(run_id: int) -> None:
    """A surrogate run with mechanisms just completed: its replays take seconds, so they are made at once
    (by a task, after this commit). On the real trainer they cost trainings: the run page offers them."""
    run = Run.all_objects.select_related("experiment").get(pk=run_id)
    if run.is_replay or replay_needs_trainings(run) or not mechanism_spans(run):
        return
    transaction.on_commit(lambda: current_app.send_task(OFFER_TASK, args=[run_id]))


def offer_replays(source_id: int) -> list[int]:
    """Create and queue the replays a finished run with mechanisms is missing; their ids."""
    from .control import enqueue_step

    created = []
    with transaction.atomic():
        # The source row stays locked while its replays are made: a second offer (a double click, a
        # redelivered task) waits, then finds them all and makes none.
        source = Run.objects.select_for_update().select_related("experiment").get(pk=source_id)
        if source.status != RunStatus.COMPLETED:
            return []
        have = {removed_key(r) for r in live_replays_of(source)}
        for removed in removal_sets(mechanism_spans(source)):
            if tuple(sorted(removed)) in have:
                continue
            replay = create_replay(source, removed)
            enqueue_step(replay.pk)  # sent when the transaction commits
            created.append(replay.pk)
    if created:
        logger.info("run %s: queued replays %s", source_id, created)
    return created


# -- what the engine asks while stepping a replay -----------------------------------------------


def scheduled_mechanisms(replay: Run, index: int) -> list[dict[str, Any]]:
    """The kept mechanisms acting at this iteration, in the source's activation order."""
    return [entry for entry in replay.replay_schedule
            if entry["from"] <= index and (entry["until"] is None or index < entry["until"])]


def end_in_replay(replay: Run, runtime_names: set[str], index: int) -> None:
    """Mechanisms the replay's own runtime switched off (a failed hook, a blocking filter) act no more."""
    schedule = []
    for entry in replay.replay_schedule:
        ends_here = runtime_name(entry["name"], entry["attachment"]) in runtime_names
        if ends_here and (entry["until"] is None or entry["until"] > index + 1):
            entry = {**entry, "until": index + 1}
        schedule.append(entry)
    replay.replay_schedule = schedule
    Run.all_objects.filter(pk=replay.pk).update(replay_schedule=schedule)


def recorded_measurements(source: Run, real: bool = False) -> dict[tuple[str, int], float]:
    """Every value the source measured, by (config, seed): a replay does not train these again.

    ``real``: the source's real-trainer confirmations (a surrogate run's real Δ) instead of its values on the
    objective; the two share seeds, so they are never mixed.
    """
    found: dict[tuple[str, int], float] = {}
    if not real:
        for iteration in source.iteration_set.filter(kind=IterationKind.PROPOSAL).exclude(config={}):
            key = config_key(iteration.config)
            seeds = (source.seed, source.seed + REEVALUATION_SEED_OFFSET)
            for seed, value in zip(seeds, iteration.evaluations or [], strict=False):
                if isinstance(value, int | float):
                    found[(key, seed)] = float(value)
    for row in Confirmation.objects.filter(run=source, real=real, val_bpb__isnull=False):
        found[(config_key(row.config), row.seed)] = float(row.val_bpb)  # type: ignore[arg-type]
    return found


def recorded_summary(replay: Run, config: dict[str, Any], seed: int, real: bool = False) -> TrainingSummary | None:
    """The source's own measurement of this config on this seed (on the real trainer: ``real``), if it made one."""
    if replay.replay_of_id is None:
        return None
    source = Run.all_objects.get(pk=replay.replay_of_id)
    value = recorded_measurements(source, real).get((config_key(config), seed))
    if value is None:
        return None
    objective = Objective.TRAINER if real else source.experiment.objective
    return TrainingSummary(failure_class="ok", val_bpb=value, seed=seed, objective=objective,
                           extra={"reused_from_run": source.pk})
