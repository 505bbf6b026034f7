"""Level 2: research sessions, the mechanism library, and each run's mechanism lifecycle.

A Mechanism is code stored once (by hash). A MechanismAttachment is that code's life in one
run: validation ladder → (review) → active → deactivated, every transition in MechanismEvent.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Mechanism(models.Model):
    """Validated (or candidate) mechanism code, stored once per distinct source text."""

    code_hash = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    code = models.TextField()
    spec = models.JSONField(default=dict, blank=True)
    origin = models.CharField(max_length=40, help_text="builtin-catalogue, llm, or library")
    passed_ladder = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code_hash[:8]})"


class SessionStatus(models.TextChoices):
    RUNNING = "running", "Running"
    PRODUCED = "produced", "Produced a mechanism"
    FAILED = "failed", "Failed"


class ResearchSession(models.Model):
    """One four-round Level 2 session (explore, critique, specify, generate)."""

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="research_sessions")
    outer_cycle_index = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.RUNNING)
    status_detail = models.TextField(blank=True)
    backend = models.CharField(max_length=16)
    # {"explore": {...}, "critique": {...}, "spec": {...}, "code": "..."} plus per-round timing.
    artifacts = models.JSONField(default=dict, blank=True)
    repair_rounds = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(fields=["run", "outer_cycle_index"], name="unique_session_per_cycle"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} research session {self.outer_cycle_index} ({self.status})"


class AttachmentStatus(models.TextChoices):
    VALIDATING = "validating", "Validating"
    INVALID = "invalid", "Failed validation"
    PENDING = "pending", "Pending review"
    APPROVED = "approved", "Approved (activates at next iteration)"
    REJECTED = "rejected", "Rejected by reviewer"
    ACTIVE = "active", "Active"
    DEACTIVATED = "deactivated", "Deactivated"
    REVIEW_TIMED_OUT = "review_timed_out", "Review timed out (run continued without it)"
    RETIRED = "retired", "Retired with the run"


class MechanismAttachment(models.Model):
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="mechanism_attachments")
    mechanism = models.ForeignKey(Mechanism, on_delete=models.PROTECT, related_name="attachments")
    session = models.ForeignKey(
        ResearchSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="attachments"
    )
    status = models.CharField(max_length=16, choices=AttachmentStatus.choices, default=AttachmentStatus.VALIDATING)
    status_detail = models.TextField(blank=True)
    # [{"step": "spec"|"static"|"import"|"dry_run", "ok": bool, "detail": str, "seconds": float}]
    ladder = models.JSONField(default=list, blank=True)
    dry_run_report = models.JSONField(default=dict, blank=True)
    activated_at_iteration = models.IntegerField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    deactivated_at_iteration = models.IntegerField(null=True, blank=True)
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_comment = models.TextField(blank=True)
    # Totals over the run: {"hook": calls} and number of decisions changed.
    hook_calls = models.JSONField(default=dict, blank=True)
    decisions_changed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        permissions = [("review_mechanism", "Can approve or reject mechanisms")]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["run", "status"])]

    def __str__(self) -> str:
        return f"{self.mechanism.name} on run {self.run_id} ({self.status})"

    @property
    def is_inert(self) -> bool:
        return self.status in (AttachmentStatus.ACTIVE, AttachmentStatus.DEACTIVATED) and self.decisions_changed == 0


class MechanismEvent(models.Model):
    """Every lifecycle transition of an attachment, with who and when."""

    attachment = models.ForeignKey(MechanismAttachment, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    note = models.TextField(blank=True)
    at_iteration = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.from_status or '-'} -> {self.to_status}"
