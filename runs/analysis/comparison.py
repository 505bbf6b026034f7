"""Comparison of an experiment's groups (and optionally other experiments' groups, e.g. the paper's).

`build_comparison` turns a handful of queries (experiments, runs, iterations, LLM usage: four
queries whatever the number of runs) into one JSON-able dict used by the comparison page, the
JSON API and the reports. All numbers come from `runs.analysis.stats`.

Definitions (shown on the page too):
- proposal p: the p-th proposal iteration of a run (baselines, baseline repeats and
  re-evaluations are not proposals); p = 0 is the baseline.
- running best at p: the lowest val_bpb among the run's baseline, kept results and later
  baseline rows (the paper's group C re-baselines every batch) up to proposal p.
- search Δ = running best at the budget − baseline. Negative is better. Biased low: a minimum
  over many noisy evaluations.
- confirmed Δ = the mean over r fresh seeds of (best config − baseline config), re-trained when
  the run ended (runs/engine/confirmation.py). Comparisons use it by default once the experiment has it,
  at the full budget T (a run was confirmed at its end, not at an earlier proposal).
- real Δ (surrogate experiments with real confirmation) = the same, with best and baseline trained
  on the real trainer: what the surrogate's search is worth in reality.
- A run enters the summary only if it reached the budget (number of proposals); others are
  listed as excluded, so groups are compared at equal budget.
- Headroom per group (runs/power.py): how many runs tie on one best value, the best value known on
  the objective, and how far the group got towards it. Power per pair: the smallest difference the
  test could detect at 80% power with the pair's spread and n, and the n per group needed to detect
  the paper's C − A.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from mechanisms.labels import BUILTIN_LABEL
from mechanisms.models import MechanismAttachment

from ..models import (
    GROUP_LEVELS,
    AgentBackend,
    BudgetKind,
    Experiment,
    Group,
    Iteration,
    IterationKind,
    IterationStatus,
    LLMCall,
    Objective,
    Run,
    RunKind,
)
from . import power, stats
from .confirmed import ConfirmedDelta, re_trained_deltas
from .credit import RunCredits, credits_of_runs, group_credit

ComparisonData = dict[str, Any]

SIGNIFICANCE = 0.05
DELTA_SOURCES = ("auto", "confirmed", "search", "real")
TEST_LABELS = {"permutation": "permutation test", "welch": "Welch's t-test"}
GROUP_ORDER = ["R", "A", "B", "C", "D"]


@lru_cache(maxsize=256)
def _t975(df: int) -> float:
    return stats.t_quantile(0.975, df)


def _band(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sd and a 95% t interval at one proposal index (cached t quantiles: this runs per point)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = _t975(n - 1) * sd / n**0.5
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


@dataclass
class RunTrace:
    run: Run
    baseline: float | None = None
    # running[p] = running best after proposal p (p = 0: the baseline).
    running: list[float | None] = field(default_factory=list)
    keeps_at: list[int] = field(default_factory=list)  # proposal indices that were kept
    crashes_at: list[int] = field(default_factory=list)
    invalid_at: list[int] = field(default_factory=list)  # proposals refused before training
    proposals: list[dict[str, Any]] = field(default_factory=list)  # for parameter importance
    agent_seconds: float = 0.0

    @property
    def proposals_done(self) -> int:
        return len(self.running) - 1 if self.running else 0


def _trace_runs(runs: Sequence[Run], rows: Iterable[tuple[Any, ...]]) -> dict[int, RunTrace]:
    traces = {run.pk: RunTrace(run=run) for run in runs}
    by_run: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_run[row[0]].append(row)
    for run_id, trace in traces.items():
        baseline = trace.run.baseline_val_bpb
        best: float | None = baseline
        started = False
        for _run_id, _index, kind, status, value, changes, agent_seconds in by_run.get(run_id, []):
            trace.agent_seconds += agent_seconds or 0.0
            if kind == IterationKind.BASELINE and not started:
                if baseline is None:
                    baseline = value
                    best = value
                continue
            if kind == IterationKind.PROPOSAL:
                if not started:
                    started = True
                    trace.running.append(best)
                p = len(trace.running)
                incumbent = best
                if status == IterationStatus.KEEP and value is not None:
                    best = value if best is None else min(best, value)
                    trace.keeps_at.append(p)
                if status == IterationStatus.CRASH:
                    trace.crashes_at.append(p)
                if status == IterationStatus.INVALID_PROPOSAL:
                    trace.invalid_at.append(p)
                trace.running.append(best)
                trace.proposals.append(
                    {"changes": changes or {}, "value": value, "incumbent": incumbent, "status": status}
                )
                continue
            # A later baseline row (the paper re-baselines each batch) or a kept re-evaluation.
            if value is not None and status in (IterationStatus.BASELINE, IterationStatus.KEEP) and started:
                best = value if best is None else min(best, value)
                trace.running[-1] = best
        if not started and baseline is not None:
            trace.running.append(baseline)
        trace.baseline = baseline
    return traces


def _series_key(experiment: Experiment, group: str, primary: Experiment) -> str:
    return group if experiment.pk == primary.pk else f"{group}@{experiment.pk}"


def _series_label(experiment: Experiment, group: str, primary: Experiment) -> str:
    label = Group(group).label if group in Group.values else group
    if experiment.pk == primary.pk:
        return label
    return f"{label} · {experiment.name}{' (reference)' if experiment.is_reference else ''}"


def build_comparison(
    experiment: Experiment,
    others: Sequence[Experiment] = (),
    budget: int | None = None,
    test: str = "permutation",
    delta_source: str = "auto",
) -> ComparisonData:
    """``test`` ("permutation" or "welch") decides which Holm-adjusted p-value highlights a pair;
    ``delta_source`` ("confirmed", "search", "real", or "auto": confirmed when available) which Δ is compared."""
    if delta_source not in DELTA_SOURCES:
        raise ValueError(f"unknown delta source {delta_source!r} (expected one of {', '.join(DELTA_SOURCES)})")
    if test not in stats.TESTS:
        raise ValueError(f"unknown test {test!r} (expected one of {', '.join(stats.TESTS)})")
    experiments = [experiment, *[o for o in others if o.pk != experiment.pk]]
    runs = list(
        Run.objects.filter(experiment__in=experiments)
        .select_related("experiment")
        .order_by("experiment_id", "group", "repeat")
    )
    rows = (
        Iteration.objects.filter(run__in=[run.pk for run in runs])
        .order_by("run_id", "index")
        .values_list("run_id", "index", "kind", "status", "val_bpb", "changes", "agent_seconds")
    )
    traces = _trace_runs(runs, rows)

    if budget is None:
        budget = min(e.iterations for e in experiments)
    budget = max(0, budget)
    confirmed, real = re_trained_deltas(runs)
    at_full_budget = budget >= experiment.iterations

    def exists(deltas: dict[int, ConfirmedDelta | None]) -> bool:
        return at_full_budget and any(
            value is not None for run_id, value in deltas.items() if traces[run_id].run.experiment_id == experiment.pk
        )

    available, real_available = exists(confirmed), exists(real)
    # A run is confirmed at its end: at an earlier budget only the search Δ exists.
    source = "search" if not at_full_budget else (
        ("confirmed" if available else "search") if delta_source == "auto" else delta_source)

    group_order = {g: i for i, g in enumerate(GROUP_ORDER)}
    series_runs: dict[str, list[RunTrace]] = defaultdict(list)
    series_meta: dict[str, dict[str, Any]] = {}
    def order(r: Run) -> tuple[bool, int, int, int]:
        return (r.experiment_id != experiment.pk, r.experiment_id, group_order.get(r.group, 9), r.repeat)

    for run in sorted(runs, key=order):
        key = _series_key(run.experiment, run.group, experiment)
        series_runs[key].append(traces[run.pk])
        series_meta.setdefault(
            key,
            {"key": key, "group": run.group, "label": _series_label(run.experiment, run.group, experiment),
             "experiment": run.experiment_id, "is_reference": run.experiment.is_reference,
             "objective": run.experiment.objective},
        )

    groups = []
    deltas: dict[str, list[float]] = {}
    credits = credits_of_runs(runs)
    best_known = _BestKnown()
    for key, members in series_runs.items():
        block = _group_block(series_meta[key], members, budget, {"confirmed": confirmed, "real": real}, source)
        block["credit"] = _credit_block(block, [t.run for t in members], credits)
        block["headroom"] = _headroom(block, best_known(members[0].run.experiment))
        groups.append(block)
        deltas[key] = [r["delta"] for r in groups[-1]["runs"] if r["included"] and r["delta"] is not None]

    pairs = [_pair(first, second, deltas[first], deltas[second])
             for first, second in itertools.combinations([g["key"] for g in groups], 2)]
    for pair in pairs:
        pair["power"] = power.pair_power(deltas[pair["first"]], deltas[pair["second"]]).as_dict()
    for name in stats.TESTS:
        for pair, adjusted in zip(pairs, stats.holm_adjust([p[f"p_{name}"] for p in pairs]), strict=True):
            pair[f"p_{name}_holm"] = adjusted
    for pair in pairs:
        chosen = pair[f"p_{test}_holm"]
        pair["highlighted"] = chosen is not None and chosen < SIGNIFICANCE

    notes = [
        "Δ = best − baseline in val_bpb at the same budget of proposals; negative is better.",
        ("Δ compared here: confirmed — each run's best and baseline configs re-trained on fresh seeds when it "
         "ended (mean of the paired differences); runs without a confirmation are excluded."
         if source == "confirmed" else
         "Δ compared here: real — each surrogate run's best and baseline configs trained on the real trainer when "
         "it ended (mean of the paired differences per seed); runs without a real confirmation are excluded."
         if source == "real" else
         "Δ compared here: search — the best of the run's noisy evaluations minus its baseline, biased low (a "
         "minimum over many draws)."
         + ("" if at_full_budget else " Confirmed Δ exists only at the full budget T.")),
        f"Runs enter the summary only once they reach {budget} proposals; the others are listed as excluded.",
        f"Highlighted pairs: {TEST_LABELS[test]} (two-sided), p < {SIGNIFICANCE} after Holm's correction across "
        f"all {len(pairs)} pairs. Both tests are shown, raw and Holm-adjusted; the permutation test (exact up to 7 "
        "runs per group, 4,999 sampled relabellings beyond) assumes nothing about the distribution and is the "
        "default at small n.",
        "Mechanism credit (groups with Level 2): a run's final best val_bpb replayed without its mechanisms "
        "(same seeds and agent randomness) minus its real final best; positive = the mechanisms helped. Replays "
        "are never counted as runs here.",
        "Effect: the difference of mean Δ with Welch's 95% interval, and Hedges' g (difference in pooled sds, "
        "small-sample corrected) with its approximate 95% interval. With 3–5 repeats per group the tests have "
        "little power: an unhighlighted pair is not evidence of no difference.",
        f"Power: per pair, the smallest difference of mean Δ that a two-sided t-test (α = {power.ALPHA}) detects with "
        f"{power.TARGET_POWER:.0%} probability at the pair's n and pooled sd (noncentral t), and the runs per group "
        f"needed to detect a difference the size of the paper's C − A ({power.PAPER_C_MINUS_A:+.4f}: the published "
        "repeats C1 and A1) at that spread.",
        "Headroom: runs tied = runs whose best equals another run's best in the group (to 1e-9: many ties suggest "
        "a floor, not an optimum); best known = the lowest val_bpb recorded on the same objective, preset and "
        "budget in any experiment (and the preset's tuned start where it was measured at that budget); "
        "share = (mean baseline − mean best) / (mean baseline − best known).",
    ]
    if any(e.is_reference for e in experiments):
        notes.append(
            "Reference (paper) runs were trained on different hardware and data scale: compare Δ, not absolute "
            "val_bpb. Their parameter changes are not recorded, only the hypotheses' prose."
        )
    disagreements = [
        t.run for t in traces.values()
        if t.run.best_val_bpb is not None and t.running and t.running[-1] is not None
        and abs(t.run.best_val_bpb - t.running[-1]) > 1e-9
    ]
    if disagreements:
        notes.append(
            "The trace-derived best differs from the stored best for runs "
            + ", ".join(f"{r.group}{r.repeat} (#{r.pk})" for r in disagreements)
            + " (e.g. a re-evaluated best); the charts and table use the trace."
        )

    return {
        "experiment": _experiment_dict(experiment),
        "compared_with": [_experiment_dict(e) for e in experiments[1:]],
        "budget": budget,
        "max_proposals": max((t.proposals_done for t in traces.values()), default=0),
        "groups": groups,
        "pairs": pairs,
        "test": test,
        "delta_source": source,
        "confirmed_available": available,
        "real_available": real_available,
        "test_label": TEST_LABELS[test],
        "reference_group": "R" if "R" in series_runs else None,
        "parameters": _parameter_importance(traces.values()),
        "llm_usage": _llm_usage(experiments, runs, traces),
        "notes": notes,
    }


class _BestKnown:
    """The best value known per objective setting (objective, preset, budget), one query per setting."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str, str, float], dict[str, Any] | None] = {}

    def __call__(self, experiment: Experiment) -> dict[str, Any] | None:
        if experiment.is_reference:
            return None  # published runs: another machine and data scale, nothing here to compare with
        key = (experiment.objective, experiment.preset, experiment.budget_kind, experiment.budget_value)
        if key not in self.cache:
            self.cache[key] = best_known_value(experiment)
        return self.cache[key]


def best_known_value(experiment: Experiment) -> dict[str, Any] | None:
    """The lowest val_bpb known for the experiment's objective at its preset and budget, and where it comes from.

    Recorded values of every search run (never a replay) of a non-reference experiment on the same setting
    (predicted ones on the surrogate, measured ones on the trainer); on the real trainer also the real mean of any
    tuned start measured at this FLOP budget (experiments keep the record of the tuned start they began from).
    """
    same_setting = {
        "objective": experiment.objective, "preset": experiment.preset, "budget_kind": experiment.budget_kind,
        "budget_value": experiment.budget_value, "is_reference": False,
    }
    row = (
        Iteration.objects.filter(
            **{f"run__experiment__{key}": value for key, value in same_setting.items()}, run__kind=RunKind.SEARCH,
            val_bpb__isnull=False,
            status__in=(IterationStatus.BASELINE, IterationStatus.KEEP, IterationStatus.DISCARD),
        )
        .order_by("val_bpb", "run_id", "index")
        .values("val_bpb", "run_id", "index")
        .first()
    )
    known: dict[str, Any] | None = None
    if row is not None:
        known = {"value": row["val_bpb"], "source": f"lowest val_bpb recorded on this setting (run #{row['run_id']} "
                                                    f"iteration #{row['index']})"}
    if experiment.objective == Objective.TRAINER and experiment.budget_kind == BudgetKind.FLOPS:
        starts = Experiment.objects.filter(preset=experiment.preset).exclude(tuned_start={}).values_list(
            "tuned_start", flat=True)
        for start in starts:
            value = start.get("mean_real_val_bpb")
            if start.get("budget_flops") == experiment.budget_value and isinstance(value, float) and (
                known is None or value < known["value"]
            ):
                known = {"value": value, "source": f"the {experiment.preset} tuned start's real mean over seeds "
                                                   f"{start.get('seeds')}"}
    return known


def _headroom(block: dict[str, Any], known: dict[str, Any] | None) -> dict[str, Any]:
    reached = [r for r in block["runs"] if r["best"] is not None]
    included = [r for r in block["runs"] if r["included"]]
    room = power.headroom([r["baseline"] for r in included], [r["best"] for r in included],
                          known["value"] if known else None)
    return {
        "ties": power.ties([r["best"] for r in reached]).as_dict(),
        "runs_at_budget": len(reached),
        "best_known_source": known["source"] if known else "",
        **room.as_dict(),
    }


def _experiment_dict(experiment: Experiment) -> dict[str, Any]:
    return {
        "id": experiment.pk,
        "name": experiment.name,
        "is_reference": experiment.is_reference,
        "iterations": experiment.iterations,
        "groups": experiment.groups,
        "repeats": experiment.repeats,
        "agent_backend": experiment.agent_backend,
        "acceptance_policy": experiment.acceptance_policy,
        "objective": experiment.objective,
    }


def _group_block(
    meta: dict[str, Any], members: list[RunTrace], budget: int,
    re_trained: dict[str, dict[int, ConfirmedDelta | None]], source: str,
) -> dict[str, Any]:
    """``re_trained``: the runs' confirmed Δ ("confirmed") and real Δ ("real"); ``source`` picks the Δ compared."""
    run_rows: list[dict[str, Any]] = []
    for trace in members:
        reached = trace.baseline is not None and trace.proposals_done >= budget
        best = trace.running[budget] if reached else None
        search_delta = best - trace.baseline if best is not None and trace.baseline is not None else None
        confirmation = re_trained["confirmed"].get(trace.run.pk)
        real = re_trained["real"].get(trace.run.pk)
        chosen = real if source == "real" else confirmation
        delta = search_delta if source == "search" else (chosen.delta if chosen else None)
        run_rows.append({
            "id": trace.run.pk,
            "repeat": trace.run.repeat,
            "status": trace.run.status,
            "baseline": trace.baseline,
            "best": best,
            "delta": delta,
            "search_delta": search_delta,
            "confirmed": confirmation.as_dict() if confirmation else None,
            "real": real.as_dict() if real else None,
            "proposals": trace.proposals_done,
            "keeps": sum(1 for p in trace.keeps_at if p <= budget),
            "crashes": sum(1 for p in trace.crashes_at if p <= budget),
            "invalid": sum(1 for p in trace.invalid_at if p <= budget),
            "included": reached and delta is not None,
            "running_best": trace.running,
            "running_delta": [
                v - trace.baseline if v is not None and trace.baseline is not None else None for v in trace.running
            ],
        })
    included = [r for r in run_rows if r["included"]]
    longest = max((len(t.running) for t in members), default=0)
    absolute, running_delta = [], []
    for p in range(longest):
        absolute.append(_band([r["running_best"][p] for r in run_rows
                               if p < len(r["running_best"]) and r["running_best"][p] is not None]))
        running_delta.append(_band([r["running_delta"][p] for r in run_rows
                            if p < len(r["running_delta"]) and r["running_delta"][p] is not None]))
    level_strategy, level_research = GROUP_LEVELS.get(meta["group"], (False, False))
    return {
        **meta,
        "levels": {"strategy": level_strategy, "research": level_research},
        "n": len(included),
        "n_runs": len(run_rows),
        "excluded": [{"id": r["id"], "repeat": r["repeat"], "proposals": r["proposals"], "status": r["status"],
                      "reason": "budget not reached" if r["proposals"] < budget or r["baseline"] is None
                      else "not confirmed on the real trainer" if source == "real" else "not confirmed"}
                     for r in run_rows if not r["included"]],
        "baseline": stats.summarize([r["baseline"] for r in included]).as_dict(),
        "best": stats.summarize([r["best"] for r in included]).as_dict(),
        "delta": stats.summarize([r["delta"] for r in included]).as_dict(),
        "search_delta": stats.summarize([r["search_delta"] for r in included]).as_dict(),
        "confirmed_delta": stats.summarize([r["confirmed"]["delta"] for r in included if r["confirmed"]]).as_dict(),
        "real_delta": stats.summarize([r["real"]["delta"] for r in included if r["real"]]).as_dict(),
        "keeps": sum(r["keeps"] for r in included),
        "crashes": sum(r["crashes"] for r in included),
        "invalid": sum(r["invalid"] for r in included),
        "runs": run_rows,
        "series": {"absolute": absolute, "delta": running_delta},
    }


def _credit_block(group: dict[str, Any], runs: list[Run], credits: dict[int, RunCredits]) -> dict[str, Any]:
    """The group's mechanisms' counterfactual credit (from paired replays), each run's on its row."""
    found = group_credit(runs, credits)
    for row in group["runs"]:
        row["mechanism_credit"] = found["runs"].get(row["id"], {}).get("credit")
        row["mechanism_credit_confirmed"] = found["runs"].get(row["id"], {}).get("confirmed_credit")
    return {"all_mechanisms": found["all_mechanisms"], "by_kind": found["by_kind"]}


def _pair(first: str, second: str, a: list[float], b: list[float]) -> dict[str, Any]:
    welch = stats.welch_t_test(a, b)
    effect = stats.hedges_g(a, b)
    difference = (sum(a) / len(a) - sum(b) / len(b)) if a and b else None
    note = ""
    if welch is None:
        note = "needs at least 2 runs in each group"
    elif welch.note:
        note = welch.note
    return {
        "first": first,
        "second": second,
        "n_first": len(a),
        "n_second": len(b),
        "difference": difference,
        "t": welch.t if welch else None,
        "df": welch.df if welch else None,
        "p_welch": welch.p_value if welch else None,
        "p_permutation": stats.permutation_p_value(a, b),
        "ci_low": welch.ci_low if welch else None,
        "ci_high": welch.ci_high if welch else None,
        "hedges_g": effect.hedges_g if effect else None,
        "g_ci_low": effect.ci_low if effect else None,
        "g_ci_high": effect.ci_high if effect else None,
        "involves_control": "R" in (first, second),
        "note": note,
    }


def _parameter_importance(traces: Iterable[RunTrace]) -> dict[str, Any]:
    """Per parameter: how often changed, kept, the gain credited to kept changes, Δ when changed vs not.

    A proposal's Δ is its val_bpb − the incumbent when it was decided (negative = better). The
    gain of a kept proposal changing k parameters is split equally between them. This is
    descriptive: parameters are changed together and in context, so it is not a causal effect.
    """
    proposals = [p for t in traces for p in t.proposals]
    with_changes = [p for p in proposals if p["changes"]]
    measured = [p for p in proposals if p["value"] is not None and p["incumbent"] is not None]
    names = sorted({name for p in with_changes for name in p["changes"]})
    rows = []
    for name in names:
        changed = [p for p in with_changes if name in p["changes"]]
        kept = [p for p in changed if p["status"] == IterationStatus.KEEP
                and p["value"] is not None and p["incumbent"] is not None]
        gain = sum((p["incumbent"] - p["value"]) / len(p["changes"]) for p in kept)
        d_changed = [p["value"] - p["incumbent"] for p in measured if name in p["changes"]]
        d_other = [p["value"] - p["incumbent"] for p in measured if name not in p["changes"]]
        rows.append({
            "name": name,
            "proposals": len(changed),
            "keeps": len(kept),
            "crashes": sum(1 for p in changed if p["status"] == IterationStatus.CRASH),
            "gain_from_keeps": gain,
            "mean_delta_changed": sum(d_changed) / len(d_changed) if d_changed else None,
            "n_changed_measured": len(d_changed),
            "mean_delta_not_changed": sum(d_other) / len(d_other) if d_other else None,
            "n_not_changed_measured": len(d_other),
        })
    rows.sort(key=lambda r: -r["gain_from_keeps"])
    return {
        "rows": rows,
        "proposals": len(proposals),
        "proposals_without_changes": len(proposals) - len(with_changes),
        "invalid_proposals": sum(1 for p in proposals if p["status"] == IterationStatus.INVALID_PROPOSAL),
    }


def _llm_usage(
    experiments: Sequence[Experiment], runs: Sequence[Run], traces: dict[int, RunTrace]
) -> list[dict[str, Any]]:
    run_ids = [run.pk for run in runs]
    calls = (
        LLMCall.objects.filter(Q(run__in=run_ids) | Q(research_session__run__in=run_ids))
        .annotate(
            experiment_id_=Coalesce("run__experiment_id", "research_session__run__experiment_id"),
            group_=Coalesce("run__group", "research_session__run__group"),
        )
        .values("experiment_id_", "group_", "level", "backend")
        .annotate(calls=Count("id"), tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"),
                  seconds=Sum("latency_seconds"))
    )
    by_experiment = {e.pk: e for e in experiments}
    rows = []
    seen: set[tuple[int, str]] = set()
    for row in calls:
        experiment = by_experiment[row["experiment_id_"]]
        seen.add((experiment.pk, row["group_"]))
        rows.append({
            "experiment": experiment.pk,
            "group": row["group_"],
            "level": row["level"],
            "backend": row["backend"],
            "label": BUILTIN_LABEL if row["backend"] == AgentBackend.BUILTIN else f"LLM {experiment.llm_model}".strip(),
            "calls": row["calls"],
            "tokens_in": row["tokens_in"] or 0,
            "tokens_out": row["tokens_out"] or 0,
            "seconds": row["seconds"] or 0.0,
        })
    # Groups that made no LLM call at all: the built-in agent (or an imported reference, whose
    # LLM usage was not published). Their proposing time still shows, from the iterations.
    agent_seconds: dict[tuple[int, str], float] = defaultdict(float)
    for trace in traces.values():
        agent_seconds[(trace.run.experiment_id, trace.run.group)] += trace.agent_seconds
    for (experiment_id, group), seconds in sorted(agent_seconds.items()):
        if (experiment_id, group) in seen:
            continue
        experiment = by_experiment[experiment_id]
        if experiment.is_reference:
            label = "not published for the reference runs"
        elif experiment.agent_backend == AgentBackend.BUILTIN:
            label = BUILTIN_LABEL
        else:
            label = "no LLM call recorded yet"
        rows.append({"experiment": experiment_id, "group": group, "level": "1", "backend": experiment.agent_backend,
                     "label": label, "calls": 0, "tokens_in": 0, "tokens_out": 0, "seconds": seconds})
    rows.sort(key=lambda r: (r["experiment"], r["group"], r["level"]))
    return rows


def mechanism_counts(experiment: Experiment) -> dict[str, int]:
    """Attachments by status across the experiment's runs (for the report header)."""
    return dict(
        MechanismAttachment.objects.filter(run__experiment=experiment)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
