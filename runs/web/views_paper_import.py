"""The page that uploads the paper's published per-repeat reports into a read-only reference experiment
(the reading and checking is analysis/paper_import.py; the API's upload shares it)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from ..analysis.paper_import import DEFAULT_EXPERIMENT_NAME, MAX_FILE_BYTES, PaperImportError, import_reports
from ..models import Experiment

MAX_UPLOAD_FILES = 20


@require_http_methods(["GET", "POST"])
def paper_import_upload(request: HttpRequest) -> HttpResponse:
    """Upload published per-repeat reports (A1.json, ...) into a read-only reference experiment."""
    error = ""
    name = DEFAULT_EXPERIMENT_NAME
    if request.method == "POST":
        name = request.POST.get("experiment_name", "").strip() or DEFAULT_EXPERIMENT_NAME
        uploads = request.FILES.getlist("files")
        if not uploads:
            error = "Choose at least one report file (JSON)."
        elif len(uploads) > MAX_UPLOAD_FILES:
            error = f"At most {MAX_UPLOAD_FILES} files at once."
        elif any((upload.size or 0) > MAX_FILE_BYTES for upload in uploads):
            error = f"A file is larger than {MAX_FILE_BYTES // 1_000_000} MB."
        else:
            try:
                experiment, runs = import_reports(
                    [(upload.name or "upload.json", upload.read()) for upload in uploads], name, request.user
                )
            except PaperImportError as failure:
                error = f"Nothing was imported: {failure}"
            else:
                messages.success(
                    request,
                    f"Imported {len(runs)} run(s) ({', '.join(f'{r.group}{r.repeat}' for r in runs)}) "
                    f"into {experiment.name}.",
                )
                return redirect("experiment_compare", experiment_id=experiment.pk)
    references = Experiment.objects.filter(is_reference=True).order_by("-created_at")
    return render(request, "runs/report_import_paper.html",
                  {"error": error, "experiment_name": name, "references": references},
                  status=400 if error else 200)
