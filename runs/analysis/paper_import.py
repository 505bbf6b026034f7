"""Import the paper's published per-repeat reports as a read-only reference experiment.

Format (mechanisms/fixtures/paper_runs/README.md): `group`, `repeat`, `baseline_bpb`,
`best_val_bpb`, `best_iteration`, `improvement` (baseline − best, positive is better), optional
`keeps`/`discards`/`crashes`/`total_iterations`, and `trace`: `{iter, bpb, status, desc}` rows.
Crashes carry bpb = 0. In groups C and D the iteration numbers restart at every batch of ten:
each batch of C starts with a fresh baseline row (iter 0), D's later batches restart at iter 1
with no baseline row.

Every file is validated completely (types, counts, the published summary against the trace)
before anything is written; all files of one import are written in one transaction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from ..models import (
    GROUP_LEVELS,
    AgentBackend,
    Experiment,
    Iteration,
    IterationKind,
    IterationStatus,
    Run,
    RunStatus,
)

DEFAULT_EXPERIMENT_NAME = "Paper reference runs (arXiv 2603.23420)"
PAPER_GROUPS = ("A", "B", "C", "D")
MAX_FILE_BYTES = 5_000_000
MAX_TRACE_ROWS = 10_000
MAX_DESC_CHARS = 100_000
TOLERANCE = 1e-6
ROW_STATUSES = ("keep", "discard", "crash")
# Keys of the published reports that the import does not use (kept for the record only).
KNOWN_EXTRA_KEYS = {"status", "outer_cycles", "n_batches", "level2_rounds", "level2_sessions", "outer_trace"}
KNOWN_KEYS = {"group", "repeat", "baseline_bpb", "best_val_bpb", "best_iteration", "improvement", "trace",
              "keeps", "discards", "crashes", "total_iterations"} | KNOWN_EXTRA_KEYS


class PaperImportError(ValueError):
    """The file is not a valid published report; nothing was written."""


@dataclass
class ParsedRow:
    index: int
    raw_iter: int
    kind: str
    status: str
    val_bpb: float | None
    best_before: float | None
    hypothesis: str


@dataclass
class ParsedReport:
    source: str
    group: str
    repeat: int
    baseline: float
    best: float
    best_index: int
    improvement: float
    proposals: int
    rows: list[ParsedRow] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PaperImportError(f"{where} must be a finite number, got {json.dumps(value)[:40]}")
    return float(value)


def _integer(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PaperImportError(f"{where} must be an integer, got {json.dumps(value)[:40]}")
    if value < minimum:
        raise PaperImportError(f"{where} must be ≥ {minimum}, got {value}")
    return value


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE


def parse_report(content: bytes | str, source: str) -> ParsedReport:
    """Validate one report completely and return what will be stored (no database access)."""
    if len(content) > MAX_FILE_BYTES:
        raise PaperImportError(f"{source}: file is larger than {MAX_FILE_BYTES // 1_000_000} MB")
    try:
        data = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PaperImportError(f"{source}: not valid JSON ({error})") from None
    try:
        return _parse(data, source)
    except PaperImportError as error:
        message = str(error)
        raise PaperImportError(message if message.startswith(f"{source}:") else f"{source}: {message}") from None


def _parse(data: Any, source: str) -> ParsedReport:
    if not isinstance(data, dict):
        raise PaperImportError("the top level must be a JSON object")
    missing = [k for k in ("group", "repeat", "baseline_bpb", "best_val_bpb", "best_iteration", "improvement", "trace")
               if k not in data]
    if missing:
        raise PaperImportError(f"missing key(s): {', '.join(missing)}")
    group = data["group"]
    if group not in PAPER_GROUPS:
        raise PaperImportError(f"unknown group {json.dumps(group)[:20]} (expected one of {', '.join(PAPER_GROUPS)})")
    repeat = _integer(data["repeat"], "repeat", minimum=1)
    baseline = _number(data["baseline_bpb"], "baseline_bpb")
    best = _number(data["best_val_bpb"], "best_val_bpb")
    best_iteration = _integer(data["best_iteration"], "best_iteration")
    improvement = _number(data["improvement"], "improvement")
    trace = data["trace"]
    if not isinstance(trace, list) or not trace:
        raise PaperImportError("trace must be a non-empty list")
    if len(trace) > MAX_TRACE_ROWS:
        raise PaperImportError(f"trace has more than {MAX_TRACE_ROWS} rows")

    rows: list[ParsedRow] = []
    counts = {"keep": 0, "discard": 0, "crash": 0}
    incumbent: float | None = None
    previous_iter = -1
    for position, row in enumerate(trace):
        where = f"trace[{position}]"
        if not isinstance(row, dict):
            raise PaperImportError(f"{where} must be an object")
        for key in ("iter", "bpb", "status", "desc"):
            if key not in row:
                raise PaperImportError(f"{where} is missing {key!r}")
        raw_iter = _integer(row["iter"], f"{where}.iter")
        bpb = _number(row["bpb"], f"{where}.bpb")
        status = row["status"]
        if status not in ROW_STATUSES:
            raise PaperImportError(
                f"{where}.status must be one of {', '.join(ROW_STATUSES)}, got {json.dumps(status)[:30]}"
            )
        desc = row["desc"]
        if not isinstance(desc, str):
            raise PaperImportError(f"{where}.desc must be a string")
        if len(desc) > MAX_DESC_CHARS:
            raise PaperImportError(f"{where}.desc is longer than {MAX_DESC_CHARS} characters")
        if "\x00" in desc:  # PostgreSQL cannot store NUL characters in text
            raise PaperImportError(f"{where}.desc contains a NUL character")
        counts[status] += 1
        # Iteration numbers count up by one; a new batch restarts at 0 with a baseline row (group C) or
        # at 1 without one (group D's later batches).
        new_batch = raw_iter == 0 or (raw_iter == 1 and previous_iter > 1)
        if raw_iter != previous_iter + 1 and not new_batch:
            raise PaperImportError(
                f"{where}.iter is {raw_iter} after {previous_iter}: iterations count up by one and a new batch "
                "restarts at 0 (with a baseline row) or 1"
            )
        previous_iter = raw_iter
        is_baseline = raw_iter == 0
        if position == 0 and not is_baseline:
            raise PaperImportError("trace[0] must be the baseline (iter 0)")
        if is_baseline and status != "keep":
            raise PaperImportError(f"{where} is a baseline (iter 0) but its status is {status!r}")
        if status == "crash":
            value: float | None = None
            if bpb != 0.0:
                raise PaperImportError(f"{where} is a crash but bpb is {bpb} (crashes carry bpb 0)")
        else:
            if bpb <= 0.0:
                raise PaperImportError(f"{where} has bpb {bpb} but status {status!r}: only crashes carry bpb 0")
            value = bpb
        if is_baseline:
            kind, stored_status = IterationKind.BASELINE, IterationStatus.BASELINE
        else:
            kind, stored_status = IterationKind.PROPOSAL, status
        rows.append(ParsedRow(position, raw_iter, kind, stored_status, value, incumbent, desc))
        if value is not None and (is_baseline or status == "keep"):
            incumbent = value if incumbent is None else min(incumbent, value)

    if not _close(rows[0].val_bpb or 0.0, baseline):
        raise PaperImportError(f"baseline_bpb {baseline} differs from the first trace row's bpb {rows[0].val_bpb}")
    measured = [r for r in rows if r.val_bpb is not None and (r.kind == IterationKind.BASELINE or r.status == "keep")]
    trace_best = min(measured, key=lambda r: r.val_bpb or 0.0)
    if not _close(trace_best.val_bpb or 0.0, best):
        raise PaperImportError(
            f"best_val_bpb {best} differs from the best kept value in the trace ({trace_best.val_bpb})"
        )
    if trace_best.raw_iter != best_iteration:
        raise PaperImportError(
            f"best_iteration {best_iteration} differs from the iteration of the best kept value ({trace_best.raw_iter})"
        )
    if not _close(improvement, baseline - best):
        raise PaperImportError(f"improvement {improvement} is not baseline_bpb − best_val_bpb ({baseline - best})")
    for key, count in (("keeps", counts["keep"]), ("discards", counts["discard"]), ("crashes", counts["crash"]),
                       ("total_iterations", len(rows))):
        if key in data and _integer(data[key], key) != count:
            raise PaperImportError(f"{key} is {data[key]} but the trace has {count}")

    return ParsedReport(
        source=source, group=group, repeat=repeat, baseline=baseline, best=best, best_index=trace_best.index,
        improvement=baseline - best, proposals=sum(1 for r in rows if r.kind == IterationKind.PROPOSAL), rows=rows,
        ignored_keys=sorted(set(data) - KNOWN_KEYS),
    )


def import_reports(
    files: list[tuple[str, bytes | str]], experiment_name: str = DEFAULT_EXPERIMENT_NAME, user: Any = None
) -> tuple[Experiment, list[Run]]:
    """Validate every file, then write them all in one transaction (into a new or existing reference experiment)."""
    if not files:
        raise PaperImportError("no file given")
    experiment_name = experiment_name.strip() or DEFAULT_EXPERIMENT_NAME
    if len(experiment_name) > 200:
        raise PaperImportError("the experiment name is longer than 200 characters")
    if "\x00" in experiment_name:
        raise PaperImportError("the experiment name contains a NUL character")
    reports = [parse_report(content, source) for source, content in files]
    seen: dict[tuple[str, int], str] = {}
    for report in reports:
        key = (report.group, report.repeat)
        if key in seen:
            raise PaperImportError(
                f"{report.source} and {seen[key]} are both group {report.group} repeat {report.repeat}"
            )
        seen[key] = report.source

    with transaction.atomic():
        existing = Experiment.objects.select_for_update().filter(name=experiment_name).first()
        if existing is not None and not existing.is_reference:
            raise PaperImportError(f"experiment {experiment_name!r} exists and is not a reference experiment")
        if existing is not None:
            taken = set(existing.runs.values_list("group", "repeat"))
            clashes = [r.source for r in reports if (r.group, r.repeat) in taken]
            if clashes:
                raise PaperImportError(
                    f"{', '.join(clashes)}: that group and repeat is already imported into {experiment_name!r}"
                )
            experiment = existing
        else:
            experiment = Experiment.objects.create(
                name=experiment_name,
                description=(
                    "Published per-repeat reports of the paper's ablation, imported read-only. Only the "
                    "trace (values, keep/discard/crash, hypotheses) is known; the applied changes, budget "
                    "and hardware settings of these runs are not recorded here."
                ),
                created_by=user if user is not None and user.is_authenticated else None,
                is_reference=True,
                groups=[],
                repeats=0,
                iterations=0,
                agent_backend=AgentBackend.LLM,
                review_gate=False,
            )
        runs = [_write_run(experiment, report) for report in reports]
        all_runs = list(experiment.runs.all())
        experiment.groups = sorted({r.group for r in all_runs})
        experiment.repeats = max(r.repeat for r in all_runs)
        experiment.iterations = max(r.proposals_done for r in all_runs)
        experiment.save(update_fields=["groups", "repeats", "iterations"])
    return experiment, runs


def _write_run(experiment: Experiment, report: ParsedReport) -> Run:
    level_strategy, level_research = GROUP_LEVELS[report.group]
    detail = f"imported from {report.source}"
    if report.ignored_keys:
        detail += f" (not imported: {', '.join(report.ignored_keys)})"
    run = Run.objects.create(
        experiment=experiment,
        group=report.group,
        repeat=report.repeat,
        seed=0,
        level_strategy=level_strategy,
        level_research=level_research,
        status=RunStatus.COMPLETED,
        status_detail=detail,
        baseline_val_bpb=report.baseline,
        best_val_bpb=report.best,
        best_iteration=report.best_index,
        proposals_done=report.proposals,
    )
    Iteration.objects.bulk_create([
        Iteration(
            run=run,
            index=row.index,
            kind=row.kind,
            status=row.status,
            val_bpb=row.val_bpb,
            evaluations=[row.val_bpb] if row.val_bpb is not None else [],
            best_before=row.best_before,
            hypothesis=row.hypothesis,
            proposal_source="paper" if row.kind == IterationKind.PROPOSAL else "",
            failure_class="crashed" if row.status == IterationStatus.CRASH else "",
            decision_reason=f"as published (iter {row.raw_iter} of its batch)",
        )
        for row in report.rows
    ])
    return run
