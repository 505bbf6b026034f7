"""Experiments, runs, iterations, Level 1.5 outer cycles and LLM calls.

A run's search state (best config, trace, frozen set, guidance) is always derived from its
iteration and outer-cycle rows; the few summary columns on Run (best/baseline values) are
written in the same transaction as the row that changes them, for the dashboard's lists.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class Group(models.TextChoices):
    A = "A", "A: Level 1"
    B = "B", "B: Level 1 + 1.5"
    C = "C", "C: Level 1 + 1.5 + 2"
    D = "D", "D: Level 1 + 2"
    R = "R", "R: random control"


GROUP_LEVELS: dict[str, tuple[bool, bool]] = {
    # group -> (level 1.5 on, level 2 on)
    "A": (False, False),
    "B": (True, False),
    "C": (True, True),
    "D": (False, True),
    "R": (False, False),
}


class Objective(models.TextChoices):
    TRAINER = "trainer", "Real trainer"
    SURROGATE = "surrogate", "Surrogate (fitted model, not real training)"


class BudgetKind(models.TextChoices):
    FLOPS = "flops", "Compute (FLOPs)"
    SECONDS = "seconds", "Wall-clock seconds"


class AgentBackend(models.TextChoices):
    BUILTIN = "builtin", "built-in heuristic (no LLM)"
    LLM = "llm", "LLM (OpenAI-compatible)"


class AcceptancePolicy(models.TextChoices):
    STRICT = "strict", "Strict (paper): keep iff val_bpb < best"
    NOISE_AWARE = "noise_aware", "Noise-aware: gain > k·σ, new best re-evaluated"


class Experiment(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    is_reference = models.BooleanField(default=False, help_text="Imported published runs; read-only.")

    groups = models.JSONField(default=list)
    repeats = models.PositiveIntegerField(default=1)
    iterations = models.PositiveIntegerField(default=10, help_text="T: proposals per run after the baseline.")
    strategy_interval = models.PositiveIntegerField(default=5, help_text="K: iterations per outer cycle.")
    research_interval = models.PositiveIntegerField(default=1, help_text="M: outer cycles per Level 2 session.")
    preset = models.CharField(max_length=32, default="cpu-tiny")
    objective = models.CharField(max_length=16, choices=Objective.choices, default=Objective.TRAINER)
    budget_kind = models.CharField(max_length=16, choices=BudgetKind.choices, default=BudgetKind.FLOPS)
    budget_value = models.FloatField(default=3e12)
    seed_base = models.IntegerField(default=0)
    threads = models.PositiveIntegerField(default=2)
    base_config = models.JSONField(default=dict, blank=True)

    agent_backend = models.CharField(max_length=16, choices=AgentBackend.choices, default=AgentBackend.BUILTIN)
    llm_base_url = models.CharField(max_length=500, blank=True)
    llm_model = models.CharField(max_length=200, blank=True)
    # Never rendered into a page; the form only says whether one is set.
    llm_api_key = models.CharField(max_length=500, blank=True)

    acceptance_policy = models.CharField(
        max_length=16, choices=AcceptancePolicy.choices, default=AcceptancePolicy.STRICT
    )
    noise_k = models.FloatField(default=2.0, help_text="Noise-aware: keep iff gain > k × noise sd.")
    baseline_repeats = models.PositiveIntegerField(default=3, help_text="Noise-aware: baseline trainings (r).")
    review_gate = models.BooleanField(default=True)
    library_mechanisms = models.ManyToManyField("mechanisms.Mechanism", blank=True, related_name="experiments")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    CANCELLED = "cancelled", "Cancelled"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class Run(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    group = models.CharField(max_length=1, choices=Group.choices)
    repeat = models.PositiveIntegerField(default=1)
    seed = models.IntegerField(default=0)
    level_strategy = models.BooleanField(default=False, help_text="Level 1.5 on.")
    level_research = models.BooleanField(default=False, help_text="Level 2 on.")
    random_control = models.BooleanField(default=False, help_text="Group R: random proposals, no history.")

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    status_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Step lease: a worker owns the next step while lease_expires_at is in the future.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    steps_claimed = models.PositiveIntegerField(default=0)

    # Summary columns, written with the iteration that changes them.
    baseline_val_bpb = models.FloatField(null=True, blank=True)
    noise_sd = models.FloatField(null=True, blank=True)
    best_val_bpb = models.FloatField(null=True, blank=True)
    best_iteration = models.IntegerField(null=True, blank=True)
    proposals_done = models.PositiveIntegerField(default=0, help_text="Proposal iterations recorded (of T).")
    # Each enqueued step carries the run's current ticket; a task with an older ticket is stale
    # (superseded by the reaper) and does nothing. So at most one step chain exists per run.
    step_ticket = models.PositiveIntegerField(default=0)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    # Live progress of the training in flight (for clients that connect mid-iteration).
    live_progress = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["experiment_id", "group", "repeat"]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"]),
            models.Index(fields=["experiment", "group"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "group", "repeat"], name="unique_run_per_group_repeat"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment.name} · {self.group}{self.repeat}"

    @property
    def is_finished(self) -> bool:
        return self.status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED)


class IterationKind(models.TextChoices):
    BASELINE = "baseline", "Baseline"
    BASELINE_REPEAT = "baseline_repeat", "Baseline repeat (noise estimate)"
    PROPOSAL = "proposal", "Proposal"
    REEVALUATION = "reevaluation", "Re-evaluation of a candidate best"


class IterationStatus(models.TextChoices):
    BASELINE = "baseline", "baseline"
    KEEP = "keep", "keep"
    DISCARD = "discard", "discard"
    CRASH = "crash", "crash"
    INVALID_PROPOSAL = "invalid_proposal", "invalid proposal"


class Iteration(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="iteration_set")
    index = models.PositiveIntegerField(help_text="0 = baseline; then one per step.")
    kind = models.CharField(max_length=16, choices=IterationKind.choices, default=IterationKind.PROPOSAL)
    # {"PARAM": {"old": ..., "new": ...}} — typed values, validated against the schema.
    changes = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    hypothesis = models.TextField(blank=True)
    proposal_source = models.CharField(max_length=120, blank=True, help_text="agent, random, or mechanism:<name>")
    val_bpb = models.FloatField(null=True, blank=True, help_text="Mean of `evaluations` when re-evaluated.")
    evaluations = models.JSONField(default=list, blank=True, help_text="Every val_bpb measured for this config.")
    best_before = models.FloatField(null=True, blank=True, help_text="The incumbent's val_bpb when decided.")
    decision_reason = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=IterationStatus.choices)
    failure_class = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    # Per-phase seconds; overhead = wall − training − eval − agent.
    wall_seconds = models.FloatField(default=0.0)
    training_seconds = models.FloatField(default=0.0)
    eval_seconds = models.FloatField(default=0.0)
    agent_seconds = models.FloatField(default=0.0)
    overhead_seconds = models.FloatField(default=0.0)
    simulated_seconds = models.FloatField(
        default=0.0, help_text="Surrogate objective only: the training + eval time the fitted model predicts."
    )
    steps = models.PositiveIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    curve = models.JSONField(default=list, blank=True, help_text="[[step, train_loss], ...]")
    # Attribution: [{"mechanism": name, "hook": ..., "effect": ..., "detail": ...}]
    mechanism_effects = models.JSONField(default=list, blank=True)
    # {"mechanism name": {"hook": calls}}
    hook_calls = models.JSONField(default=dict, blank=True)
    # Proposal attempts rejected before this one (schema errors, duplicates, filters).
    rejected_attempts = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="unique_iteration_index_per_run"),
        ]
        indexes = [models.Index(fields=["run", "status"])]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.index} {self.status}"

    def as_trace_record(self) -> dict[str, Any]:
        """The JSON record mechanisms and prompts see for this iteration."""
        return {
            "iteration": self.index,
            "kind": self.kind,
            "changes": self.changes,
            "config": self.config,
            "val_bpb": self.val_bpb,
            "best_before": self.best_before,
            "status": self.status,
            "failure_class": self.failure_class,
            "hypothesis": self.hypothesis,
            "proposal_source": self.proposal_source,
            "training_seconds": self.training_seconds,
        }


class OuterCycle(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="outer_cycles")
    index = models.PositiveIntegerField()
    after_iteration = models.PositiveIntegerField()
    frozen = models.JSONField(default=list, help_text="Frozen set after this cycle.")
    newly_frozen = models.JSONField(default=list)
    unfrozen = models.JSONField(default=list)
    guidance = models.TextField(blank=True)
    strategy = models.TextField(blank=True)
    # {"PARAM": "reason"} for every freeze/unfreeze decision, plus the agent's reasoning.
    reasons = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="unique_outer_cycle_per_run")]

    def __str__(self) -> str:
        return f"run {self.run_id} outer cycle {self.index}"


class LLMCall(models.Model):
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="llm_calls")
    research_session = models.ForeignKey(
        "mechanisms.ResearchSession", null=True, blank=True, on_delete=models.CASCADE, related_name="llm_calls"
    )
    level = models.CharField(max_length=8, help_text="1, 1.5 or 2")
    purpose = models.CharField(
        max_length=40, help_text="propose, strategy, explore, critique, specify, generate, repair"
    )
    backend = models.CharField(max_length=16, choices=AgentBackend.choices)
    model = models.CharField(max_length=200, blank=True)
    prompt = models.TextField()
    reply = models.TextField(blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    latency_seconds = models.FloatField(default=0.0)
    timeout_seconds = models.FloatField(default=0.0, help_text="How long this request was allowed (0 = not sent).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["run", "level"])]

    def __str__(self) -> str:
        return f"{self.backend} {self.purpose} (level {self.level})"


class WorkerHeartbeat(models.Model):
    """Which workers are alive and on which queues (written by a task the worker runs)."""

    hostname = models.CharField(max_length=200, unique=True)
    queues = models.JSONField(default=list)
    last_seen = models.DateTimeField()

    def __str__(self) -> str:
        return self.hostname
