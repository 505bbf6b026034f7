"""What the run page shows of counterfactual credit: the waterfall, the replays, the offer to replay.

Replays are made by a Celery task (``runs.tasks.offer_replays``), never in a view: on the surrogate
the task runs by itself when a run with mechanisms completes; on the real trainer the run page offers
it with what it costs, and its button (``views.run_replays_offer``) only queues the task.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from django.utils.safestring import SafeString, mark_safe

from ..analysis.credit import ADDS_UP, ReplayOutcome, RunCredits, run_credits
from ..engine.replay import planned_trainings, replay_needs_trainings
from ..mechanism_spans import mechanism_spans, removal_sets
from ..models import IterationKind, Run, RunStatus

COLOURS = {"total": "#8a94a3", "step": "#4c78a8", "gain": "#2e8b57", "loss": "#c0392b", "interaction": "#b58b00"}


def _colour(bar: dict[str, Any]) -> str:
    if bar["kind"] in ("credit", "interaction"):
        return COLOURS["gain"] if bar["end"] < bar["start"] else COLOURS["loss"] if bar["end"] > bar["start"] \
            else COLOURS["total"]
    return COLOURS[bar["kind"]]


def waterfall_svg(bars: list[dict[str, Any]], width: int = 860, height: int = 300) -> SafeString:
    """Floating bars on a val_bpb axis (lower is better): each starts where the previous one ended."""
    values = [v for bar in bars for v in (bar["start"], bar["end"])]
    low, high = min(values), max(values)
    pad = max(high - low, 1e-4) * 0.12
    low, high = low - pad, high + pad
    left, right, top, bottom = 70, 10, 24, 84
    slot = (width - left - right) / max(1, len(bars))

    def y(value: float) -> float:
        return top + (height - top - bottom) * (high - value) / (high - low)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="credit-waterfall" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="credit waterfall: baseline to final best">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for i in range(5):
        value = low + (high - low) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'stroke="#e4e8ee"/><text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#67707c">{value:.4f}</text>')
    for index, bar in enumerate(bars):
        x = left + slot * index + slot * 0.18
        bar_width = slot * 0.64
        if bar["kind"] == "total":
            top_y, bottom_y = y(bar["end"]), y(low)
        else:
            top_y, bottom_y = sorted((y(bar["start"]), y(bar["end"])))
        bar_height = max(1.5, bottom_y - top_y)
        label = escape(str(bar["label"]))
        value = bar["end"] if bar["kind"] == "total" else bar["value"]
        text = f"{value:.4f}" if bar["kind"] == "total" else f"{value:+.4f}"
        parts.append(f'<rect class="wf-bar" data-kind="{bar["kind"]}" data-label="{label}" data-value="{value:.6f}" '
                     f'x="{x:.1f}" y="{top_y:.1f}" width="{bar_width:.1f}" height="{bar_height:.1f}" '
                     f'fill="{_colour(bar)}"><title>{label}: {text}</title></rect>')
        parts.append(f'<text x="{x + bar_width / 2:.1f}" y="{top_y - 5:.1f}" text-anchor="middle" font-size="11" '
                     f'fill="#1f2933">{text}</text>')
        lines = _wrapped(str(bar["label"]), max(6, int(slot / 6.6)))
        centre = x + bar_width / 2
        spans = "".join(f'<tspan x="{centre:.1f}" dy="{0 if n == 0 else 13}">{escape(line)}</tspan>'
                        for n, line in enumerate(lines))
        parts.append(f'<text x="{centre:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" '
                     f'fill="#1f2933">{spans}</text>')
        if bar.get("diverged_at") is not None:
            parts.append(f'<text x="{centre:.1f}" y="{height - bottom + 18 + 13 * len(lines)}" text-anchor="middle" '
                         f'font-size="10" fill="#67707c">diverges at #{bar["diverged_at"]}</text>')
        if index + 1 < len(bars):  # the connector to the next bar's start
            parts.append(f'<line x1="{x + bar_width:.1f}" x2="{x + slot:.1f}" y1="{y(bar["end"]):.1f}" '
                         f'y2="{y(bar["end"]):.1f}" stroke="#9aa5b1" stroke-dasharray="3 2"/>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11" fill="#67707c">val_bpb (lower is better); '
                 'green: the mechanism helped, red: it hurt</text>')
    return mark_safe("".join(parts) + "</svg>")  # built from numbers and escaped text only


def _wrapped(label: str, width: int, most_lines: int = 3) -> list[str]:
    """A bar's label on at most three lines of about `width` characters, broken after spaces and underscores."""
    words = re.findall(r"[^ _]+[ _]?", label) or [label]
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word.rstrip()) > width:
            lines.append("")
        lines[-1] += word
    lines = [line.rstrip() for line in lines]
    if len(lines) > most_lines:
        lines = [*lines[: most_lines - 1], lines[most_lines - 1][: width - 1] + "…"]
    return lines


def _outcome_row(outcome: ReplayOutcome) -> dict[str, Any]:
    return {**outcome.as_dict(), "removed_text": ", ".join(outcome.names)}


def credit_context(run: Run) -> dict[str, Any]:
    """What the run page shows about credit: for a run, its waterfall and replays; for a replay, what it is."""
    if run.is_replay:
        return {"replay_source": run.replay_of, "replay_removed": ", ".join(e["name"] for e in run.replay_removed)}
    spans = mechanism_spans(run)
    if not spans:
        return {}
    credits: RunCredits = run_credits(run)
    outcomes = [m.outcome for m in credits.mechanisms if m.outcome is not None]
    if credits.without_all is not None and len(spans) > 1:
        outcomes.append(credits.without_all)
    failed = [o.replay_id for o in outcomes if o.status in (RunStatus.FAILED, RunStatus.CANCELLED)]
    missing = len(removal_sets(spans)) - len({o.removed for o in outcomes}) + len(failed)
    context: dict[str, Any] = {
        "credits": credits,
        "credit_rows": [_outcome_row(o) for o in outcomes],
        "credit_missing": missing,
        "credit_failed": failed,
        "credit_waterfall": waterfall_svg(credits.waterfall()) if credits.complete else None,
        "credit_interaction": credits.interaction,
        "credit_adds_up": credits.interaction is not None and abs(credits.interaction) <= ADDS_UP,
        "credit_json": credits.as_dict(),
    }
    if missing and run.status == RunStatus.COMPLETED and (failed or replay_needs_trainings(run)):
        # On the surrogate the replays were made without asking: offered again only where one failed.
        context["replay_offer"] = {"trainings": planned_trainings(run), "seconds": _seconds_per_training(run),
                                   "costs_trainings": replay_needs_trainings(run)}
    return context


def _seconds_per_training(run: Run) -> float:
    seconds = [s for s in run.iteration_set.filter(kind=IterationKind.PROPOSAL, training_seconds__gt=0)
               .values_list("training_seconds", flat=True)]
    return sum(seconds) / len(seconds) if seconds else 0.0
