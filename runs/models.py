"""Experiments, runs, iterations, Level 1.5 outer cycles and LLM calls.

A run's search state (best config, trace, frozen set, guidance) is always derived from its
iteration and outer-cycle rows; the few summary columns on Run (best/baseline values) are
written in the same transaction as the row that changes them, for the dashboard's lists.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from mechanisms.labels import BUILTIN_LABEL


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
    BUILTIN = "builtin", BUILTIN_LABEL
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
    # 0 = none; the form defaults to 3 on the surrogate and 2 on the real trainer.
    confirmation_repeats = models.PositiveIntegerField(
        default=0, help_text="Confirmation: the best and the baseline config re-trained on this many fresh seeds."
    )
    # Surrogate experiments only: the best and the baseline config re-trained on the REAL trainer on this
    # many seeds when a run ends (real Δ). 0 = none; the form defaults to 2 on the surrogate.
    real_confirmation_repeats = models.PositiveIntegerField(
        default=0, help_text="Real confirmation: best and baseline re-trained on the real trainer on this many seeds."
    )
    # The tuned start the runs began from (trainer/tuned_start.py's record when the experiment was created, so
    # a later change of the data file does not rewrite history); empty = the schema's default config.
    tuned_start = models.JSONField(default=dict, blank=True)
    review_gate = models.BooleanField(default=True)
    # Review policy with the gate on: None = wait for a reviewer (default); N = continue without
    # the mechanism after N minutes, recorded as "review timed out" (never as a person's rejection).
    review_timeout_minutes = models.PositiveIntegerField(null=True, blank=True)
    library_mechanisms = models.ManyToManyField("mechanisms.Mechanism", blank=True, related_name="experiments")
    archived_at = models.DateTimeField(null=True, blank=True, help_text="Hidden from the list; kept whole.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def real_confirmation_seeds(self) -> int:
        """Seeds of the real-trainer confirmation asked for: only a surrogate experiment's results need one."""
        return self.real_confirmation_repeats if self.objective == Objective.SURROGATE else 0


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    # Level 2 is a step of the outer loop: the run waits (holding no worker and no lease).
    RESEARCHING = "researching", "Researching (Level 2 session)"
    AWAITING_REVIEW = "awaiting_review", "Awaiting review"
    PAUSED = "paused", "Paused"
    CANCELLED = "cancelled", "Cancelled"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class RunKind(models.TextChoices):
    SEARCH = "search", "Search run"
    # A counterfactual re-run of a finished run without some of its mechanisms (runs/engine/replay.py):
    # recorded like a run, never counted as one.
    REPLAY = "replay", "Replay (counterfactual; never counted in group statistics)"


class SearchRunManager(models.Manager["Run"]):
    """The default manager: search runs only, so no list, statistic or export can count a replay by mistake.

    The engine and the replay pages reach replays through ``Run.all_objects``.
    """

    def get_queryset(self) -> models.QuerySet[Run]:
        return super().get_queryset().filter(kind=RunKind.SEARCH)


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
WAITING_RUN_STATUSES = (RunStatus.RESEARCHING, RunStatus.AWAITING_REVIEW)


class Run(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=8, choices=RunKind.choices, default=RunKind.SEARCH)
    # Replays only: the run replayed, the mechanisms removed ([{"attachment", "mechanism", "name"}]),
    # the iteration it replays from, the mechanisms it keeps and when they act
    # ([{"attachment", "mechanism", "name", "from", "until"}]), and where an LLM agent's prompts first
    # differed from the recorded ones (from there its replies are new, not replayed).
    replay_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    replay_removed = models.JSONField(default=list, blank=True)
    replay_from_iteration = models.PositiveIntegerField(null=True, blank=True)
    replay_schedule = models.JSONField(default=list, blank=True)
    replay_llm_diverged_at = models.PositiveIntegerField(null=True, blank=True)
    group = models.CharField(max_length=1, choices=Group.choices)
    repeat = models.PositiveIntegerField(default=1)
    seed = models.IntegerField(default=0)
    level_strategy = models.BooleanField(default=False, help_text="Level 1.5 on.")
    level_research = models.BooleanField(default=False, help_text="Level 2 on.")
    random_control = models.BooleanField(default=False, help_text="Group R: random proposals, no history.")

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    status_detail = models.TextField(blank=True)
    # Since when the run has waited for Level 2 (a session, then a review); None while it runs.
    waiting_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Step lease: a worker owns the next step while lease_expires_at is in the future.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Who holds the lease (see runs/engine/lease.py): on the same machine a dead holder is noticed at
    # once by its pid; elsewhere by a heartbeat much more frequent than the lease's length.
    lease_host = models.CharField(max_length=255, blank=True)
    lease_node = models.CharField(max_length=120, blank=True, help_text="Kernel boot + pid namespace of the holder.")
    lease_pid = models.PositiveIntegerField(null=True, blank=True)
    lease_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The fencing ticket: raised by every claim and never lowered. A holder commits only while the
    # row still carries its ticket, so a holder that was cut off and taken over changes nothing.
    lease_ticket = models.PositiveBigIntegerField(default=0)
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
    tags = models.JSONField(default=list, blank=True, help_text="Short labels a person gave the run.")
    notes = models.TextField(blank=True, help_text="A person's notes on the run.")

    all_objects = models.Manager()
    objects = SearchRunManager()  # the default manager (Meta): search runs only

    class Meta:
        ordering = ["experiment_id", "group", "repeat"]
        default_manager_name = "objects"
        base_manager_name = "all_objects"
        indexes = [
            models.Index(fields=["status", "lease_expires_at"]),
            models.Index(fields=["experiment", "group"]),
            models.Index(fields=["replay_of", "kind"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "group", "repeat"], condition=models.Q(kind="search"),
                                    name="unique_run_per_group_repeat"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment.name} · {self.group}{self.repeat}"

    @property
    def is_finished(self) -> bool:
        return self.status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED)

    @property
    def is_replay(self) -> bool:
        return self.kind == RunKind.REPLAY


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
    # Surrogate objective only (from the summary's extra): the config lies outside the measured support, so
    # its value is no better than the measured configs nearest to it; how far, and what those gave.
    extrapolated = models.BooleanField(default=False)
    support_distance = models.FloatField(null=True, blank=True)
    nearest_measured_val_bpb = models.FloatField(null=True, blank=True)
    curve = models.JSONField(default=list, blank=True, help_text="[[step, train_loss], ...]")
    host = models.CharField(max_length=255, blank=True, help_text="The machine whose worker trained it.")
    device = models.CharField(max_length=200, blank=True, help_text="That worker's device: cpu, or cuda: name.")
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


class InterruptedAttempt(models.Model):
    """A step whose worker died mid-way: what it had done is kept, and the step was done again."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="interrupted_attempts")
    index = models.PositiveIntegerField(help_text="The iteration the attempt was working on.")
    holder = models.CharField(max_length=64, help_text="The lease owner that died.")
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(help_text="Why the holder was judged gone.")
    # The run's live progress when the holder died: {"iteration", "points", "step", ...}.
    progress = models.JSONField(default=dict, blank=True)
    taken_over_at = models.DateTimeField(auto_now_add=True)
    ticket = models.PositiveBigIntegerField(null=True, blank=True, help_text="The lease ticket it held.")
    # Set when the holder was not dead but cut off, came back and tried to commit: refused (fenced).
    fenced_at = models.DateTimeField(null=True, blank=True)
    fenced_result = models.JSONField(default=dict, blank=True, help_text="What its refused commit carried.")

    class Meta:
        ordering = ["run_id", "taken_over_at"]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.index} interrupted ({self.holder})"

    @property
    def steps_done(self) -> int:
        return int(self.progress.get("step") or 0)


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


class DeviceKind(models.TextChoices):
    CPU = "cpu", "CPU"
    CUDA = "cuda", "CUDA GPU"


class WorkerHeartbeat(models.Model):
    """Which workers are alive, on which machine, with which device and on which queues.

    A worker writes its row when it starts and renews last_seen (the database's clock) while it runs.
    """

    hostname = models.CharField(max_length=200, unique=True, help_text="The Celery worker's name.")
    host = models.CharField(max_length=255, blank=True, help_text="The machine's hostname.")
    device_kind = models.CharField(max_length=8, choices=DeviceKind.choices, default=DeviceKind.CPU)
    device_name = models.CharField(max_length=200, blank=True)
    device_memory_bytes = models.BigIntegerField(null=True, blank=True)
    queues = models.JSONField(default=list)
    started_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField()

    def __str__(self) -> str:
        return self.hostname


class ConfirmationRole(models.TextChoices):
    BASELINE = "baseline", "Baseline config"
    BEST = "best", "Best config"


class Confirmation(models.Model):
    """One re-training at the end of a run on a fresh seed: its baseline or its best config (confirmed Δ), on the
    experiment's objective or, for a surrogate experiment, on the real trainer (real Δ)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="confirmations")
    real = models.BooleanField(default=False, help_text="Trained on the real trainer (a surrogate run's real Δ).")
    role = models.CharField(max_length=8, choices=ConfirmationRole.choices)
    replicate = models.PositiveIntegerField(help_text="0 … r−1; baseline and best of one replicate share a seed.")
    seed = models.IntegerField()
    config = models.JSONField(default=dict)
    val_bpb = models.FloatField(null=True, blank=True)
    failure_class = models.CharField(max_length=32, blank=True)
    training_seconds = models.FloatField(default=0.0)
    budget_flops = models.FloatField(null=True, blank=True, help_text="Real trainings: the FLOP budget trained at.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "real", "replicate", "role"]
        constraints = [
            # Exactly once: a step retried after a worker died cannot record the same training twice.
            models.UniqueConstraint(fields=["run", "real", "role", "replicate"], name="unique_confirmation_per_run"),
        ]

    def __str__(self) -> str:
        return f"{self.run} · {'real ' if self.real else ''}{self.role} #{self.replicate}"


class ApiToken(models.Model):
    """A per-user bearer token for scripts. Only a SHA-256 digest is stored: the token is shown once
    when created. Tokens are long random strings, so a fast digest cannot be brute-forced."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell tokens apart.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
