"""Mechanism review: the queue and one attachment's review page (artifacts, diff, ladder, dry
run, history, approve / reject / kill). The library, which adds mechanisms to experiments,
lives with the experiments (``runs.web.views_library``).

Everything generated (code, LLM text) is shown escaped: code goes through pygments (which
escapes), everything else through Django's autoescaping. Only holders of
`mechanisms.review_mechanism` see the buttons; a POST from anyone else gets a 403 page that
says why, and the attachment is unchanged.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, PythonLexer

from . import lifecycle
from .behaviour_watch import MISBEHAVED_AFTER_APPROVAL, WHAT_A_DRY_RUN_CANNOT_PROVE
from .context_processors import BLOCKED_RUN_STATUS
from .models import AttachmentStatus, MechanismAttachment
from .signals import review_context

ROUNDS = (("explore", "Explore"), ("critique", "Critique"), ("spec", "Specify"), ("code", "Generate code"))
MAX_COMMENT_CHARS = 5_000
_FORMATTER = HtmlFormatter(nowrap=False, cssclass="highlight", linenos="table")


def highlight_python(code: str) -> SafeString:
    # pygments escapes the source it formats, so its output is safe to insert.
    return mark_safe(highlight(code, PythonLexer(), _FORMATTER))


def highlight_diff(diff: str) -> SafeString:
    return mark_safe(highlight(diff, DiffLexer(), HtmlFormatter(cssclass="highlight")))


def pretty_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def can_review(user: Any) -> bool:
    return bool(user.has_perm(lifecycle.REVIEW_PERMISSION))


def ladder_summary(ladder: list[dict[str, Any]]) -> str:
    if not ladder:
        return "not run"
    failed = next((step for step in ladder if not step.get("ok")), None)
    if failed:
        return f"failed at {failed.get('step', '?')}"
    return f"passed {len(ladder)} step{'s' if len(ladder) != 1 else ''}"


def previous_attachment(attachment: MechanismAttachment) -> MechanismAttachment | None:
    """The previous version: same name, other code, created earlier — in this run first, else anywhere."""
    earlier = (
        MechanismAttachment.objects.filter(
            mechanism__name=attachment.mechanism.name, created_at__lt=attachment.created_at
        )
        .exclude(mechanism_id=attachment.mechanism_id)
        .select_related("mechanism")
        .order_by("-created_at")
    )
    return earlier.filter(run_id=attachment.run_id).first() or earlier.first()


def code_diff(old: str, new: str, old_label: str, new_label: str) -> str:
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), old_label, new_label)
    )


def round_artifacts(artifacts: dict[str, Any]) -> list[dict[str, Any]]:
    """The four rounds in order, each with prompt / reply / parsed / error / seconds when present.

    Prompts and replies come from the session's round records (the last attempt of each round);
    the generated code is not repeated here: the Code section below shows it once.
    """
    records = {r.get("round"): r for r in artifacts.get("rounds") or [] if isinstance(r, dict)}
    round_names = {"explore": "explore", "critique": "critique", "spec": "specify", "code": "generate"}
    out = []
    for key, title in ROUNDS:
        raw = artifacts.get(key)
        record = records.get(round_names[key], {})
        entry: dict[str, Any] = {"key": key, "title": title, "present": raw is not None or bool(record),
                                 "prompt": record.get("prompt") or "", "reply": record.get("reply") or "",
                                 "error": record.get("error") or "", "seconds": record.get("seconds"), "parsed": ""}
        if key == "code":
            entry["reply"] = ""  # the code itself is in the Code section
            entry["parsed"] = "(the generated code is shown in the Code section below)" if raw else ""
        elif isinstance(raw, dict) and ("prompt" in raw or "reply" in raw or "parsed" in raw):
            entry.update({k: raw.get(k) or entry[k] for k in ("prompt", "reply", "error", "seconds")})
            entry["parsed"] = pretty_json(raw["parsed"]) if raw.get("parsed") not in (None, "", {}) else ""
        elif raw is not None:
            entry["parsed"] = pretty_json(raw)
        out.append(entry)
    return out


def builtin_label(attachment: MechanismAttachment) -> str:
    """How a built-in (no LLM) mechanism is named wherever a person sees it; "" for an LLM's."""
    if attachment.mechanism.origin != "builtin-catalogue":
        return ""
    return f"catalogue pick: {attachment.mechanism.name} (built-in, no LLM)"


QUEUE_FILTERS = {
    "open": "Open: the run waits for (or will use) the decision",
    "stale": "Stale: the run ended before a decision",
    "decided": "Decided",
    "misbehaved": "Misbehaved after approval: deactivated at runtime for acting unlike its dry run",
}
DECIDED_STATUSES = (AttachmentStatus.APPROVED, AttachmentStatus.REJECTED, AttachmentStatus.REVIEW_TIMED_OUT,
                    AttachmentStatus.ACTIVE, AttachmentStatus.DEACTIVATED, AttachmentStatus.RETIRED)


@require_GET
def review_queue(request: HttpRequest) -> HttpResponse:
    show = request.GET.get("show", "open")
    if show not in QUEUE_FILTERS:
        show = "open"
    base = MechanismAttachment.objects.select_related("mechanism", "run__experiment", "reviewed_by")
    pending = base.filter(status=AttachmentStatus.PENDING)
    queries = {
        "open": pending.filter(run__finished_at__isnull=True).order_by("created_at"),
        "stale": pending.filter(run__finished_at__isnull=False).order_by("-created_at"),
        "decided": base.filter(Q(reviewed_at__isnull=False) | Q(status=AttachmentStatus.REVIEW_TIMED_OUT))
        .filter(status__in=DECIDED_STATUSES).order_by("-reviewed_at", "-created_at"),
        # The engine writes this finding first in the reason (mechanism text only ever follows, quoted).
        "misbehaved": base.filter(status=AttachmentStatus.DEACTIVATED,
                                  status_detail__startswith=MISBEHAVED_AFTER_APPROVAL).order_by("-created_at"),
    }
    attachments = list(queries[show][:200])
    now = timezone.now()
    for attachment in attachments:
        attachment.age = now - attachment.created_at  # type: ignore[attr-defined]
        attachment.ladder_text = ladder_summary(attachment.ladder)  # type: ignore[attr-defined]
        # The run's status is the engine's word for "waiting for this decision".
        attachment.blocks_run = attachment.run.status == BLOCKED_RUN_STATUS  # type: ignore[attr-defined]
    counts = {name: query.count() for name, query in queries.items()}
    return render(request, "mechanisms/review_queue.html", {
        "attachments": attachments, "show": show, "show_label": QUEUE_FILTERS[show],
        "tabs": [(name, label, counts[name]) for name, label in QUEUE_FILTERS.items()],
        "can_review": can_review(request.user),
    })


@require_GET
def attachment_detail(request: HttpRequest, attachment_id: int) -> HttpResponse:
    attachment = get_object_or_404(
        MechanismAttachment.objects.select_related("mechanism", "run__experiment", "session", "reviewed_by"),
        pk=attachment_id,
    )
    return render(request, "mechanisms/review.html", _detail_context(request, attachment))


def _detail_context(request: HttpRequest, attachment: MechanismAttachment, error: str = "") -> dict[str, Any]:
    mechanism = attachment.mechanism
    previous = previous_attachment(attachment)
    diff = ""
    if previous is not None:
        diff = code_diff(previous.mechanism.code, mechanism.code,
                         f"{previous.mechanism.name} ({previous.mechanism.code_hash[:8]}, run {previous.run_id})",
                         f"{mechanism.name} ({mechanism.code_hash[:8]}, run {attachment.run_id})")
    session = attachment.session
    llm_calls = list(session.llm_calls.order_by("created_at")) if session is not None else []
    report = attachment.dry_run_report or {}
    read_only = attachment.run.experiment.is_reference
    reviewer = can_review(request.user) and not read_only
    stale = lifecycle.is_stale(attachment)
    extra: dict[str, Any] = {}
    for _, found in review_context.send(MechanismAttachment, attachment=attachment):
        if isinstance(found, dict):
            extra.update(found)
    return {
        **extra,
        "attachment": attachment,
        "mechanism": mechanism,
        "run": attachment.run,
        "experiment": attachment.run.experiment,
        "code_html": highlight_python(mechanism.code),
        "spec_json": pretty_json(mechanism.spec),
        "previous": previous,
        "diff_html": highlight_diff(diff) if diff else None,
        "identical_to_previous": previous is not None and not diff,
        "rounds": round_artifacts(session.artifacts if session is not None else {}),
        "session": session,
        "llm_calls": llm_calls,
        "ladder": attachment.ladder,
        "ladder_text": ladder_summary(attachment.ladder),
        "dry_run": report,
        "dry_run_limits": WHAT_A_DRY_RUN_CANNOT_PROVE,
        "misbehaved": attachment.status == AttachmentStatus.DEACTIVATED
        and attachment.status_detail.startswith(MISBEHAVED_AFTER_APPROVAL),
        "dry_run_traces": report.get("traces", []) if isinstance(report, dict) else [],
        "dry_run_json": pretty_json(report),
        "events": attachment.events.select_related("actor").order_by("created_at"),
        "can_review": reviewer,
        "show_review_buttons": reviewer and attachment.status == AttachmentStatus.PENDING and not stale,
        "stale": stale,
        "builtin_label": builtin_label(attachment),
        "show_kill": reviewer and attachment.status in (AttachmentStatus.ACTIVE, AttachmentStatus.APPROVED),
        "read_only_reason": "reference experiments are read-only" if read_only else "",
        "pygments_css": HtmlFormatter(cssclass="highlight").get_style_defs(".highlight"),
        "error": error,
    }


def _forbidden(request: HttpRequest, attachment: MechanismAttachment, message: str) -> HttpResponse:
    context = _detail_context(request, attachment, error=message)
    return render(request, "mechanisms/review.html", context, status=403)


@require_POST
def attachment_action(request: HttpRequest, attachment_id: int, action: str) -> HttpResponse:
    attachment = get_object_or_404(
        MechanismAttachment.objects.select_related("mechanism", "run__experiment", "session"), pk=attachment_id
    )
    if attachment.run.experiment.is_reference:
        return _forbidden(request, attachment, "This mechanism belongs to a reference experiment, which is read-only.")
    if not can_review(request.user):
        return _forbidden(
            request, attachment,
            "You do not have permission to review mechanisms (mechanisms.review_mechanism); nothing was changed.",
        )
    comment = request.POST.get("comment", "").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        return _bad_request(request, attachment, f"The comment is longer than {MAX_COMMENT_CHARS} characters.")
    if "\x00" in comment:  # PostgreSQL cannot store NUL characters in text
        return _bad_request(request, attachment, "The comment must not contain NUL characters.")
    try:
        if action == "approve":
            lifecycle.approve(attachment, request.user, comment)
            messages.success(
                request, f"Approved {attachment.mechanism.name}: it activates at the run's next iteration."
            )
        elif action == "reject":
            lifecycle.reject(attachment, request.user, comment)
            messages.success(request, f"Rejected {attachment.mechanism.name}.")
        else:
            lifecycle.kill(attachment, request.user, comment)
            messages.success(request, f"Deactivated {attachment.mechanism.name} (kill switch).")
    except lifecycle.ReviewError as error:
        return _bad_request(request, attachment, str(error).capitalize() + ".")
    if request.headers.get("HX-Request"):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("mechanism_review", args=[attachment.pk])
        return response
    return redirect("mechanism_review", attachment_id=attachment.pk)


def _bad_request(request: HttpRequest, attachment: MechanismAttachment, message: str) -> HttpResponse:
    attachment.refresh_from_db()
    return render(request, "mechanisms/review.html", _detail_context(request, attachment, error=message), status=400)
