"""Pydantic schemas of the JSON API: one declaration drives input validation, output validation
and the OpenAPI document (django-ninja). Inputs are strict about JSON types ("5" is not 5, 1 is not
true) and refuse unknown fields, as the hand-written API did. The numeric bounds of an experiment are
read from `ExperimentForm`'s own fields, so the OpenAPI document states the limits the server enforces;
the form, shared with the dashboard, still checks them and the cross-field rules (K ≤ T, the budget's
range for its kind), so the page and the API refuse exactly the same experiments."""

from __future__ import annotations

from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..engine.experiment_form import MAX_FLOPS, MAX_SECONDS, MIN_FLOPS, MIN_SECONDS, ExperimentForm

MAX_COMMENT_CHARS = 5_000
MAX_IMPORT_FILES = 20
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100

GroupName = Literal["A", "B", "C", "D", "R"]


class Input(Schema):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorOut(Schema):
    error: str
    fields: dict[str, list[str]] | None = Field(default=None, description="per-field messages, when known")


class LoginIn(Input):
    username: StrictStr = Field(min_length=1, max_length=150, pattern=r"^[^\x00]*$")
    password: StrictStr = Field(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")


class SessionOut(Schema):
    authenticated: bool
    username: str | None
    can_review_mechanisms: bool
    csrf_token: str


class Level2IsolationOut(Schema):
    available: bool
    reason: str = Field(description="why Level 2 refuses generated code on this machine; empty when it can run it")


class IndexOut(Schema):
    openapi: str
    docs: str
    routes: list[str]
    level2_isolation: Level2IsolationOut


def low(name: str) -> Any:
    """The experiment form's lower bound of a numeric field."""
    return ExperimentForm.base_fields[name].min_value  # type: ignore[attr-defined]


def high(name: str) -> Any:
    """The experiment form's upper bound of a numeric field."""
    return ExperimentForm.base_fields[name].max_value  # type: ignore[attr-defined]


class ExperimentIn(Input):
    """Omitted fields take the dashboard form's defaults."""

    name: StrictStr = Field(max_length=200, pattern=r"^[^\x00]*$")
    groups: list[GroupName] = Field(min_length=1, max_length=5)
    description: StrictStr | None = Field(default=None, max_length=5000, pattern=r"^[^\x00]*$")
    repeats: StrictInt | None = Field(default=None, ge=low("repeats"), le=high("repeats"))
    iterations: StrictInt | None = Field(default=None, description="T: proposals per run",
                                         ge=low("iterations"), le=high("iterations"))
    strategy_interval: StrictInt | None = Field(
        default=None, description="K: iterations per outer cycle; at most `iterations` (K ≤ T)",
        ge=low("strategy_interval"), le=high("strategy_interval"))
    research_interval: StrictInt | None = Field(default=None, ge=low("research_interval"),
                                                le=high("research_interval"))
    objective: Literal["trainer", "surrogate"] | None = None
    preset: Literal["cpu-tiny", "gpu"] | None = None
    budget_kind: Literal["flops", "seconds"] | None = None
    budget_value: StrictFloat | None = Field(
        default=None, description=f"FLOPs ({MIN_FLOPS:g}–{MAX_FLOPS:g}) or seconds ({MIN_SECONDS:g}–{MAX_SECONDS:g}), "
                                  "as budget_kind says", ge=min(MIN_FLOPS, MIN_SECONDS), le=max(MAX_FLOPS, MAX_SECONDS))
    seed_base: StrictInt | None = Field(default=None, ge=low("seed_base"), le=high("seed_base"))
    threads: StrictInt | None = Field(default=None, ge=low("threads"), le=high("threads"))
    agent_backend: Literal["builtin", "llm"] | None = None
    llm_base_url: StrictStr | None = Field(default=None, max_length=500, pattern=r"^[^\x00]*$")
    llm_model: StrictStr | None = Field(default=None, max_length=200, pattern=r"^[^\x00]*$")
    llm_api_key: StrictStr | None = Field(default=None, max_length=500, pattern=r"^[^\x00]*$",
                                          description="write-only: never returned")
    acceptance_policy: Literal["strict", "noise_aware"] | None = None
    noise_k: StrictFloat | None = Field(default=None, ge=low("noise_k"), le=high("noise_k"))
    baseline_repeats: StrictInt | None = Field(default=None, ge=low("baseline_repeats"), le=high("baseline_repeats"))
    confirmation_repeats: StrictInt | None = Field(default=None, ge=low("confirmation_repeats"),
                                                   le=high("confirmation_repeats"))
    real_confirmation_repeats: StrictInt | None = Field(
        default=None, description="surrogate only: seeds of the real-trainer confirmation (default 2; 0 = none)",
        ge=low("real_confirmation_repeats"), le=high("real_confirmation_repeats"))
    start: Literal["default", "tuned"] | None = Field(
        default=None, description="baseline of every run: the schema's defaults or the preset's tuned start")
    review_gate: StrictBool | None = None
    review_timeout_minutes: StrictInt | None = Field(
        default=None, description="with the gate on: continue without the mechanism after N minutes; none = wait",
        ge=low("review_timeout_minutes"), le=high("review_timeout_minutes"))


class RunOut(Schema):
    id: int
    experiment: int
    group: str
    repeat: int
    seed: int
    level_strategy: bool
    level_research: bool
    random_control: bool
    status: str
    status_detail: str
    baseline_val_bpb: float | None
    noise_sd: float | None
    best_val_bpb: float | None
    best_iteration: int | None
    proposals_done: int
    tags: list[str]
    notes: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    waiting_since: str | None = Field(
        default=None, description="while the run waits for a Level 2 session or a review: since when")
    kind: str = Field(default="search", description="search, or replay (a counterfactual, never listed or counted)")
    replay_of: int | None = Field(default=None, description="replays: the run replayed")
    replay_from_iteration: int | None = Field(default=None, description="replays: the first iteration replayed")
    replay_removed: list[str] = Field(default_factory=list, description="replays: the mechanisms left out")
    replay_llm_diverged_at: int | None = Field(
        default=None, description="replays of LLM runs: the first iteration whose prompt differed from the recorded")


class ExperimentOut(Schema):
    id: int
    name: str
    description: str
    created_by: str | None
    created_at: str
    is_reference: bool
    groups: list[str]
    repeats: int
    iterations: int
    strategy_interval: int
    research_interval: int
    preset: str
    objective: str
    budget_kind: str
    budget_value: float
    seed_base: int
    threads: int
    agent_backend: str
    llm_base_url: str
    llm_model: str
    llm_api_key_set: bool
    acceptance_policy: str
    noise_k: float
    baseline_repeats: int
    confirmation_repeats: int
    real_confirmation_repeats: int
    tuned_start: dict[str, Any] | None = Field(
        description="the tuned start the runs began from (config, real measurements, source); null = default")
    review_gate: bool
    review_timeout_minutes: int | None


class ExperimentDetailOut(ExperimentOut):
    runs: list[RunOut]


class OuterCycleOut(Schema):
    run: int
    index: int
    after_iteration: int
    frozen: list[Any]
    newly_frozen: list[Any]
    unfrozen: list[Any]
    guidance: str
    strategy: str
    reasons: dict[str, Any]


class OuterCyclesOut(Schema):
    run: int
    results: list[OuterCycleOut]


class IterationOut(Schema):
    run: int
    index: int
    kind: str
    status: str
    failure_class: str
    changes: dict[str, Any]
    hypothesis: str
    proposal_source: str
    val_bpb: float | None
    evaluations: list[Any]
    best_before: float | None
    decision_reason: str
    wall_seconds: float
    training_seconds: float
    eval_seconds: float
    agent_seconds: float
    overhead_seconds: float
    simulated_seconds: float
    extrapolated: bool = Field(description="surrogate only: the config lies outside the measured support")
    support_distance: float | None = Field(description="surrogate only: distance to the measured support")
    nearest_measured_val_bpb: float | None = Field(description="surrogate only: what the nearest measured configs gave")
    steps: int
    tokens: int
    mechanism_effects: list[Any]
    hook_calls: dict[str, Any]
    rejected_attempts: list[Any]
    error: str
    host: str = Field(description="The machine whose worker trained it.")
    device: str = Field(description="That worker's device: 'cpu: …' or 'cuda: name, memory'.")
    created_at: str | None


class AttachmentOut(Schema):
    id: int
    run: int
    experiment: int
    name: str
    code_hash: str
    origin: str
    status: str
    status_detail: str
    ladder_ok: bool
    decisions_changed: int
    hook_calls: dict[str, Any]
    activated_at_iteration: int | None
    deactivated_at_iteration: int | None
    reviewed_by: str | None
    reviewed_at: str | None
    review_comment: str
    created_at: str
    review_url: str


class AttachmentDetailOut(AttachmentOut):
    code: str
    spec: dict[str, Any]
    ladder: list[Any]
    dry_run_report: dict[str, Any]
    session: dict[str, Any] | None
    events: list[dict[str, Any]]


class RunDetailOut(RunOut):
    iterations_url: str
    outer_cycles: list[OuterCycleOut]
    mechanisms: list[AttachmentOut]
    confirmed: dict[str, Any] | None = Field(
        description="the confirmed Δ (best vs baseline re-trained on fresh seeds); null until all are trained")
    real_confirmed: dict[str, Any] | None = Field(
        default=None, description="surrogate runs: the real Δ (best vs baseline trained on the real trainer on the "
                                  "same seeds); null until all are trained or when not asked for")


class Page(Schema):
    count: int
    page: int
    page_size: int
    pages: int


class ExperimentPage(Page):
    results: list[ExperimentOut]


class RunPage(Page):
    results: list[RunOut]


class IterationPage(Page):
    results: list[IterationOut]


class AttachmentPage(Page):
    results: list[AttachmentOut]


class CommentIn(Input):
    comment: StrictStr = Field(default="", max_length=MAX_COMMENT_CHARS, pattern=r"^[^\x00]*$")


class RejectIn(Input):
    comment: StrictStr = Field(min_length=1, max_length=MAX_COMMENT_CHARS, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",
                               description="why: a rejection needs a comment")


class NoFieldsIn(Input):
    """Run actions take no parameters; an empty object (or no body) is accepted."""


class PaperFileIn(Input):
    name: StrictStr = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    content: dict[str, Any] | StrictStr = Field(description="the report object, or its JSON text")


class PaperImportIn(Input):
    experiment_name: StrictStr = Field(default="", max_length=200, pattern=r"^[^\x00]*$")
    files: list[PaperFileIn] = Field(min_length=1, max_length=MAX_IMPORT_FILES)


class PaperImportOut(Schema):
    experiment: ExperimentOut
    runs: list[RunOut]
