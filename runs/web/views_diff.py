"""The config diff page: /diff/?a=RUN[.ITERATION]&b=RUN[.ITERATION]."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from ..analysis.config_diff import BadReference, diff_rows, resolve


@require_GET
def config_diff(request: HttpRequest) -> HttpResponse:
    references = {side: request.GET.get(side, "") for side in ("a", "b")}
    context: dict[str, object] = {"references": references}
    if references["a"] and references["b"]:
        try:
            a, b = resolve(references["a"]), resolve(references["b"])
        except BadReference as bad:
            context["error"] = str(bad)
            return render(request, "runs/config_diff.html", context, status=400)
        rows = diff_rows(a.iteration.config, b.iteration.config)
        context.update({"a": a, "b": b, "rows": rows, "changed": sum(row.changed for row in rows)})
    return render(request, "runs/config_diff.html", context)
