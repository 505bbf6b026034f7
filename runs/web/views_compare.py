"""Experiment comparison page, and the experiment reports (self-contained HTML, JSON, CSV)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from ..analysis.colours import colour
from ..analysis.comparison import DELTA_SOURCES, ComparisonData, build_comparison, mechanism_counts
from ..analysis.compute_axis import cumulative_seconds
from ..analysis.identical_groups import mark_identical_groups
from ..analysis.stats import TESTS
from ..models import Experiment, Objective, Run

MAX_COMPARED_EXPERIMENTS = 5


def objective_label(objective: str) -> str:
    return str(Objective(objective).label)


def _int_param(request: HttpRequest, name: str, low: int, high: int) -> int | None:
    raw = request.GET.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return min(max(value, low), high)


def comparison_for_request(request: HttpRequest, experiment: Experiment) -> ComparisonData:
    """`?budget=P` (proposals) and `?with=ID&with=ID` (other experiments, e.g. the paper's reference)."""
    other_ids = []
    for raw in request.GET.getlist("with")[:MAX_COMPARED_EXPERIMENTS]:
        # "²".isdigit() is True; ids past 64 bits overflow SQLite's integers.
        if raw.isascii() and raw.isdigit() and int(raw) != experiment.pk and int(raw) <= 2**62:
            other_ids.append(int(raw))
    others = list(Experiment.objects.filter(pk__in=other_ids).order_by("pk"))
    test = request.GET.get("test", "permutation")
    source = request.GET.get("delta", "auto")
    data = build_comparison(experiment, others, budget=_int_param(request, "budget", 0, 100_000),
                            test=test if test in TESTS else "permutation",
                            delta_source=source if source in DELTA_SOURCES else "auto")
    mark_identical_groups(data)
    return data


def fmt(value: float | None, digits: int = 5, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _confirmed_text(confirmed: dict[str, Any] | None) -> str:
    if confirmed is None:
        return "—"
    if confirmed["ci_low"] is None:
        return f"{fmt(confirmed['delta'], signed=True)} (n={confirmed['pairs']})"
    return (f"{fmt(confirmed['delta'], signed=True)} [{fmt(confirmed['ci_low'], signed=True)}, "
            f"{fmt(confirmed['ci_high'], signed=True)}] (n={confirmed['pairs']})")


def _credit_text(summary: dict[str, Any]) -> str:
    """Mean credit with its t interval and n; positive = the mechanisms helped."""
    if not summary["n"]:
        return "—"
    interval = (f" [{fmt(summary['ci_low'], signed=True)}, {fmt(summary['ci_high'], signed=True)}]"
                if summary["ci_low"] is not None else "")
    return f"{fmt(summary['mean'], signed=True)}{interval} (n={summary['n']})"


def _headroom_texts(headroom: dict[str, Any]) -> dict[str, str]:
    ties = headroom["ties"]
    tied = (f"{ties['runs_tied']} of {headroom['runs_at_budget']} (largest: {ties['largest']} at {fmt(ties['value'])})"
            if ties["runs_tied"] else f"0 of {headroom['runs_at_budget']}")
    share = headroom["share"]
    return {
        "ties_text": tied,
        "best_known_text": fmt(headroom["best_known"]),
        "group_best_text": fmt(headroom["group_best"]),
        "mean_best_text": fmt(headroom["mean_best"]),
        "best_known_source": headroom["best_known_source"],
        "gap_text": fmt(headroom["gap"], signed=True),
        "share_text": "—" if share is None else f"{share:.0%}",
    }


def _power_texts(pair_power: dict[str, Any]) -> dict[str, str]:
    n = pair_power["n_for_reference"]
    at = pair_power["power_at_reference"]
    return {
        "detectable_text": fmt(pair_power["detectable"]),
        "n_reference_text": "—" if n is None else str(n),
        "power_reference_text": "—" if at is None else f"{at:.0%}",
    }


def display_rows(data: ComparisonData) -> dict[str, Any]:
    """Pre-formatted strings for templates (the same for the page and the HTML report)."""
    labels = {g["key"]: g["label"] for g in data["groups"]}
    summary = []
    for g in data["groups"]:
        delta = g["delta"]
        summary.append({
            "key": g["key"],
            "label": g["label"],
            "colour": colour(g["group"]),
            "is_reference": g["is_reference"],
            "n": g["n"],
            "n_runs": g["n_runs"],
            "excluded": g["excluded"],
            "baseline": fmt(g["baseline"]["mean"]),
            "best": fmt(g["best"]["mean"]),
            "delta": fmt(delta["mean"], signed=True),
            "delta_sd": fmt(delta["sd"]),
            "delta_ci": (f"[{fmt(delta['ci_low'], signed=True)}, {fmt(delta['ci_high'], signed=True)}]"
                         if delta["ci_low"] is not None else "—"),
            "search_delta": fmt(g["search_delta"]["mean"], signed=True),
            "credit": _credit_text(g["credit"]["all_mechanisms"]["credit"]),
            "credit_confirmed": _credit_text(g["credit"]["all_mechanisms"]["confirmed_credit"]),
            "credit_by_kind": [(name, _credit_text(kind["credit"]), kind["flagged"])
                               for name, kind in g["credit"]["by_kind"].items()],
            "confirmed_delta": fmt(g["confirmed_delta"]["mean"], signed=True),
            "real_delta": fmt(g["real_delta"]["mean"], signed=True),
            **_headroom_texts(g["headroom"]),
            "keeps": g["keeps"],
            "crashes": g["crashes"],
            "invalid": g["invalid"],
            "runs": [
                {**r, "baseline_text": fmt(r["baseline"]), "best_text": fmt(r["best"]),
                 "delta_text": fmt(r["delta"], signed=True), "search_delta_text": fmt(r["search_delta"], signed=True),
                 "confirmed_text": _confirmed_text(r["confirmed"]), "real_text": _confirmed_text(r["real"])}
                for r in g["runs"]
            ],
        })
    pairs = []
    for pair in data["pairs"]:
        pairs.append({
            **pair,
            "first_label": labels[pair["first"]],
            "second_label": labels[pair["second"]],
            "difference_text": fmt(pair["difference"], signed=True),
            "t_text": fmt(pair["t"], 3, signed=True),
            "df_text": fmt(pair["df"], 2),
            "p_welch_text": fmt_p(pair["p_welch"]),
            "p_welch_holm_text": fmt_p(pair["p_welch_holm"]),
            "p_permutation_text": fmt_p(pair["p_permutation"]),
            "p_permutation_holm_text": fmt_p(pair["p_permutation_holm"]),
            "ci_text": (f"[{fmt(pair['ci_low'], signed=True)}, {fmt(pair['ci_high'], signed=True)}]"
                        if pair["ci_low"] is not None else "—"),
            "g_text": (f"{fmt(pair['hedges_g'], 2, signed=True)} [{fmt(pair['g_ci_low'], 2, signed=True)}, "
                       f"{fmt(pair['g_ci_high'], 2, signed=True)}]" if pair["hedges_g"] is not None else "—"),
            **_power_texts(pair["power"]),
        })
    parameters = [
        {**row, "gain_text": fmt(row["gain_from_keeps"]),
         "changed_text": fmt(row["mean_delta_changed"], signed=True),
         "not_changed_text": fmt(row["mean_delta_not_changed"], signed=True)}
        for row in data["parameters"]["rows"]
    ]
    credit_groups = [g for g in summary if g["credit"] != "—" or g["credit_by_kind"]]
    return {"summary": summary, "pairs": pairs, "parameters": parameters, "credit_groups": credit_groups}


@require_GET
def experiment_compare(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    data = comparison_for_request(request, experiment)
    run_ids = [r["id"] for g in data["groups"] for r in g["runs"]]
    surrogate = set(Run.objects.filter(pk__in=run_ids, experiment__objective="surrogate").values_list("pk", flat=True))
    seconds = cumulative_seconds(run_ids, surrogate)
    chart = {
        "groups": [
            {"key": g["key"], "label": g["label"], "colour": colour(g["group"]), "dashed": g["is_reference"],
             "same_as": g["same_as"],
             "series": g["series"],
             "runs": [{"repeat": r["repeat"], "absolute": r["running_best"], "delta": r["running_delta"],
                       "seconds": seconds.get(r["id"], [])}
                      for r in g["runs"]]}
            for g in data["groups"]
        ],
        "budget": data["budget"],
    }
    candidates = Experiment.objects.exclude(pk=experiment.pk).order_by("-is_reference", "-created_at")[:50]
    selected = {e["id"] for e in data["compared_with"]}
    query = request.GET.urlencode()
    return render(request, "runs/compare.html", {
        "experiment": experiment,
        "data": data,
        "level2": level2_activity(experiment),
        "chart": chart,
        "rows": display_rows(data),
        "candidates": [(e, e.pk in selected) for e in candidates],
        "query": f"?{query}" if query else "",
    })


def level2_activity(experiment: Experiment) -> list[dict[str, Any]]:
    """Per Level 2 run: each mechanism, from which iteration it acted, and what its review did to the run."""
    rows = []
    runs = experiment.runs.filter(level_research=True).order_by("group", "repeat")
    for run in runs.prefetch_related("mechanism_attachments__mechanism", "mechanism_attachments__reviewed_by"):
        attachments = sorted(run.mechanism_attachments.all(), key=lambda a: a.created_at)
        if not attachments:
            rows.append({"run": run, "mechanism": "", "status": "no mechanism produced", "active_from": None,
                         "review": "", "decisions_changed": 0})
        for a in attachments:
            if a.status == "review_timed_out":
                review = "review timed out: the run continued without it"
            elif a.status == "pending":
                review = "held: the run waits for a reviewer" if not run.is_finished else "stale: the run ended first"
            elif a.reviewed_by_id:
                verdict = "rejected" if a.status == "rejected" else "approved"
                review = f"{verdict} by {a.reviewed_by} after the run waited for it"
            elif experiment.review_gate:
                review = "no review recorded"
            else:
                review = "gate off"
            rows.append({"run": run, "mechanism": a.mechanism.name, "status": a.get_status_display(),
                         "active_from": a.activated_at_iteration, "review": review,
                         "decisions_changed": a.decisions_changed})
    return rows


# --- reports ---------------------------------------------------------------------------------


def svg_chart(data: ComparisonData, mode: str = "delta", width: int = 900, height: int = 320) -> SafeString:
    """Running best (mean per group, thin lines per repeat) as inline SVG, drawn on the server."""
    key = "running_delta" if mode == "delta" else "running_best"
    lines: list[tuple[str, str, list[float | None], float]] = []  # colour, dash pattern, values, opacity
    for g in data["groups"]:
        # A group identical to an earlier one is drawn dotted on top of it, so both stay visible.
        dash = "2 3" if g.get("same_as") else "5 3" if g["is_reference"] else ""
        for run in g["runs"]:
            lines.append((colour(g["group"]), dash, run[key], 0.35))
        means = [point["mean"] for point in g["series"][mode if mode == "delta" else "absolute"]]
        lines.append((colour(g["group"]), dash, means, 1.0))
    values = [v for _, _, series, _ in lines for v in series if v is not None]
    longest = max((len(series) for _, _, series, _ in lines), default=0)
    left, right, top, bottom = 70, 250, 16, 36  # the legend sits in the right margin
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="running best val_bpb by proposal">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    if not values or longest < 1:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#67707c">no data yet</text>')
        return mark_safe("".join(parts) + "</svg>")  # built from numbers and escaped text only
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.001, high + 0.001
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    span_x = max(1, longest - 1)

    def x(p: int) -> float:
        return left + (width - left - right) * p / span_x

    def y(v: float) -> float:
        return top + (height - top - bottom) * (high - v) / (high - low)

    for i in range(5):
        value = low + (high - low) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     'stroke="#e4e8ee"/>')
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#67707c">{value:+.4f}</text>' if mode == "delta" else
                     f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#67707c">{value:.4f}</text>')
    for p in sorted({0, span_x, *range(0, span_x + 1, max(1, span_x // 6))}):
        parts.append(f'<text x="{x(p):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" '
                     f'fill="#67707c">{p}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle" font-size="11" '
                 'fill="#67707c">proposal</text>')
    for stroke, pattern, series, opacity in lines:
        points = " ".join(f"{x(p):.1f},{y(v):.1f}" for p, v in enumerate(series) if v is not None)
        if points:
            dash = f' stroke-dasharray="{pattern}"' if pattern else ""
            width_px = 2.2 if opacity == 1.0 else 1
            parts.append(f'<polyline fill="none" stroke="{stroke}" stroke-width="{width_px}" '
                         f'stroke-opacity="{opacity}"{dash} points="{points}"/>')
    legend_y, legend_x = top + 4, width - right + 14
    for g in data["groups"]:
        pattern = "2 3" if g.get("same_as") else "5 3" if g["is_reference"] else ""
        dash = f' stroke-dasharray="{pattern}"' if pattern else ""
        label = f'{g["label"][:24]} (= {g["same_as"][:8]})' if g.get("same_as") else g["label"][:34]
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 16}" y1="{legend_y + 5}" y2="{legend_y + 5}" '
                     f'stroke="{colour(g["group"])}" stroke-width="2.5"{dash}/>'
                     f'<text x="{legend_x + 22}" y="{legend_y + 9}" font-size="11">{escape(label)}</text>')
        legend_y += 15
    return mark_safe("".join(parts) + "</svg>")  # numbers and escaped labels only


@require_GET
def report_html(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    data = comparison_for_request(request, experiment)
    html = render_to_string("runs/report.html", {
        "experiment": experiment,
        "data": data,
        "rows": display_rows(data),
        "chart_delta": svg_chart(data, "delta"),
        "chart_absolute": svg_chart(data, "absolute"),
        "mechanisms": mechanism_counts(experiment),
        "generated_at": timezone.now(),
        "generated_by": request.user,
    })
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="experiment-{experiment.pk}-report.html"'
    return response


def summary_rows(data: ComparisonData) -> list[dict[str, Any]]:
    """One row per run (and its group), the flat table behind summary.csv."""
    rows = []
    for g in data["groups"]:
        for r in g["runs"]:
            rows.append({
                "experiment": g["experiment"], "series": g["key"], "group": g["group"], "repeat": r["repeat"],
                "run": r["id"], "status": r["status"], "included": r["included"], "proposals": r["proposals"],
                "baseline_val_bpb": r["baseline"], "best_val_bpb_at_budget": r["best"], "delta": r["delta"],
                "delta_source": data["delta_source"], "search_delta": r["search_delta"],
                "confirmed_delta": r["confirmed"]["delta"] if r["confirmed"] else None,
                "confirmed_ci_low": r["confirmed"]["ci_low"] if r["confirmed"] else None,
                "confirmed_ci_high": r["confirmed"]["ci_high"] if r["confirmed"] else None,
                "real_delta": r["real"]["delta"] if r["real"] else None,
                "real_ci_low": r["real"]["ci_low"] if r["real"] else None,
                "real_ci_high": r["real"]["ci_high"] if r["real"] else None,
                "group_runs_tied": g["headroom"]["ties"]["runs_tied"],
                "group_best_known": g["headroom"]["best_known"],
                "group_mean_best": g["headroom"]["mean_best"],
                "group_gap_to_best_known": g["headroom"]["gap"],
                "group_headroom_share": g["headroom"]["share"],
                "objective": objective_label(g["objective"]),
                "keeps": r["keeps"], "crashes": r["crashes"], "invalid": r["invalid"],
                "mechanism_credit": r.get("mechanism_credit"),
                "mechanism_credit_confirmed": r.get("mechanism_credit_confirmed"),
            })
    return rows


SUMMARY_FIELDS = [
    "experiment", "objective", "series", "group", "repeat", "run", "status", "included", "proposals",
    "baseline_val_bpb", "best_val_bpb_at_budget", "delta", "delta_source", "search_delta",
    "confirmed_delta", "confirmed_ci_low", "confirmed_ci_high", "real_delta", "real_ci_low", "real_ci_high",
    "keeps", "crashes", "invalid", "mechanism_credit", "mechanism_credit_confirmed", "group_runs_tied",
    "group_best_known", "group_mean_best", "group_gap_to_best_known", "group_headroom_share",
]
PAIR_FIELDS = [
    "first", "second", "n_first", "n_second", "delta_source", "difference", "ci_low", "ci_high", "p_welch",
    "p_welch_holm", "p_permutation", "p_permutation_holm", "hedges_g", "pooled_sd", "detectable_difference_80",
    "paper_c_minus_a", "n_per_group_for_paper_c_minus_a", "power_at_paper_c_minus_a",
]


def pair_rows(data: ComparisonData) -> list[dict[str, Any]]:
    """One row per pair of series, with its test and its power (summary.csv?table=pairs)."""
    return [
        {**{k: pair[k] for k in PAIR_FIELDS if k in pair}, "delta_source": data["delta_source"],
         "pooled_sd": pair["power"]["sd"], "detectable_difference_80": pair["power"]["detectable"],
         "paper_c_minus_a": pair["power"]["reference_difference"],
         "n_per_group_for_paper_c_minus_a": pair["power"]["n_for_reference"],
         "power_at_paper_c_minus_a": pair["power"]["power_at_reference"]}
        for pair in data["pairs"]
    ]


def summary_dict(data: ComparisonData) -> dict[str, Any]:
    return {
        "experiment": data["experiment"],
        "compared_with": data["compared_with"],
        "budget": data["budget"],
        "delta_source": data["delta_source"],
        "test": data["test"],
        "groups": [{k: v for k, v in g.items() if k not in ("series", "runs")} for g in data["groups"]],
        "pairs": data["pairs"],
        "runs": summary_rows(data),
        "parameters": data["parameters"],
        "llm_usage": data["llm_usage"],
        "notes": data["notes"],
    }


@require_GET
def summary_json(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    return JsonResponse(summary_dict(comparison_for_request(request, experiment)),
                        json_dumps_params={"indent": 2, "ensure_ascii": False})


@require_GET
def summary_csv(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    data = comparison_for_request(request, experiment)
    if request.GET.get("table") == "pairs":
        rows, fields = pair_rows(data), PAIR_FIELDS
    else:
        rows, fields = summary_rows(data), SUMMARY_FIELDS
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in fields})
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    name = "pairs" if fields is PAIR_FIELDS else "summary"
    response["Content-Disposition"] = f'attachment; filename="experiment-{experiment.pk}-{name}.csv"'
    return response
