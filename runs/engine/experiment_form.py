"""What a valid experiment is: the form behind the dashboard's "new experiment" page and the JSON API.

`ExperimentForm` accepts a plain dict too (groups as a list), so the API validates with exactly the
page's rules; `save_and_start` creates the experiment, its runs and their first steps in one
transaction.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.core.validators import URLValidator
from django.db import transaction

from trainer.schema import PRESET_SETTINGS, PRESETS
from trainer.tuned_start import TunedStartError, tuned_start

from ..models import (
    AcceptancePolicy,
    AgentBackend,
    BudgetKind,
    Experiment,
    Group,
    Objective,
)
from . import control
from .confirmation import default_real_repeats, default_repeats
from .objective import REAL_TRAINING_SECONDS

# Sane bounds: large enough for the GPU preset, small enough that a typo (an extra zero in
# the exponent) does not queue a run that never ends.
MAX_ITERATIONS = 1000
MAX_REPEATS = 50
MIN_FLOPS, MAX_FLOPS = 1e6, 1e21
MIN_SECONDS, MAX_SECONDS = 5.0, 6 * 3600.0
MAX_THREADS = 256
SEED_LIMIT = 2**31 - 1 - MAX_REPEATS  # seeds are seed_base + repeat in a signed 32-bit column

START_DEFAULT, START_TUNED = "default", "tuned"
START_CHOICES = [
    (START_DEFAULT, "Default start: every knob at the schema's default"),
    (START_TUNED, "Tuned start: the best real-confirmed config known for the preset (small gains, as in the paper)"),
]

GROUP_HELP = {
    "A": "Level 1 only: propose, train, keep or discard.",
    "B": "Level 1 + 1.5: every K iterations freeze stalled parameters and write guidance.",
    "C": "Level 1 + 1.5 + 2: also research new search mechanisms every M outer cycles.",
    "D": "Level 1 + 2: mechanism research without the strategy layer.",
    "R": "Random control: same budget, random proposals without history.",
}


class ExperimentForm(forms.ModelForm):
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3}))
    groups = forms.MultipleChoiceField(
        choices=Group.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each chosen group gets `repeats` runs; repeat r of every group shares a seed.",
        error_messages={"required": "Choose at least one group."},
    )
    repeats = forms.IntegerField(min_value=1, max_value=MAX_REPEATS, initial=1, label="Repeats (n)")
    iterations = forms.IntegerField(
        min_value=1, max_value=MAX_ITERATIONS, initial=10, label="Proposals per run (T)"
    )
    strategy_interval = forms.IntegerField(
        min_value=1, max_value=MAX_ITERATIONS, initial=5, label="Iterations per outer cycle (K)"
    )
    research_interval = forms.IntegerField(
        min_value=1, max_value=100, initial=1, label="Outer cycles per Level 2 session (M)"
    )
    preset = forms.ChoiceField(choices=[(p, p) for p in PRESETS], initial=PRESETS[0])
    budget_value = forms.FloatField(
        label="Budget per training",
        initial=f"{PRESET_SETTINGS[PRESETS[0]].default_flops_budget:g}",
        widget=forms.TextInput(
            attrs={
                "inputmode": "decimal",
                "data-budget-defaults": json.dumps(
                    {name: {"flops": p.default_flops_budget, "seconds": p.default_seconds_budget}
                     for name, p in PRESET_SETTINGS.items()}
                ),
            }
        ),
        help_text=f"FLOPs ({MIN_FLOPS:g}–{MAX_FLOPS:g}) or seconds ({MIN_SECONDS:g}–{MAX_SECONDS:g}).",
    )
    seed_base = forms.IntegerField(min_value=0, max_value=SEED_LIMIT, initial=0)
    threads = forms.IntegerField(min_value=1, max_value=MAX_THREADS, initial=2)
    llm_base_url = forms.CharField(
        required=False,
        max_length=500,
        label="LLM base URL",
        validators=[URLValidator(schemes=["http", "https"])],
        widget=forms.URLInput(attrs={"placeholder": "https://api.example.com/v1"}),
    )
    llm_model = forms.CharField(required=False, max_length=200, label="LLM model")
    # Write-only: never rendered back (render_value=False), not even after a validation error.
    llm_api_key = forms.CharField(
        required=False,
        max_length=500,
        label="LLM API key",
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    noise_k = forms.FloatField(min_value=0.0, max_value=10.0, initial=2.0, label="k (margin in noise sd)")
    baseline_repeats = forms.IntegerField(min_value=2, max_value=20, initial=3, label="r (baseline trainings)")
    confirmation_repeats = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=20,
        label="Confirmation seeds (r)",
        help_text=(
            "When a run ends, its best and its baseline config are re-trained on r fresh seeds and the run reports "
            "a confirmed Δ beside the search Δ. Cost: 2r trainings per run (r when nothing was kept) — on the real "
            "trainer about 2r × one training's time per run, on the surrogate milliseconds. Empty: 3 on the "
            "surrogate, 2 on the real trainer; 0: no confirmation."
        ),
    )
    real_confirmation_repeats = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=20,
        label="Real confirmation seeds (surrogate only)",
        help_text=(
            "When a surrogate run ends, its best and its baseline config are also trained on the real trainer "
            "(the preset, 1 thread, the same FLOP budget; a seconds budget maps to the surrogate's fitted one) on r "
            "seeds, paired by seed: the run reports a real Δ. Cost: 2r real trainings per run (r when nothing was "
            f"kept), each about {REAL_TRAINING_SECONDS / 60:.0f} minute on cpu-tiny at the default budget (one "
            "measured at 57 s on 2 cores), on the training queue. Empty: 2; 0: none."
        ),
    )
    start = forms.ChoiceField(
        choices=START_CHOICES, initial=START_DEFAULT, required=False, widget=forms.RadioSelect,
        label="Baseline of every run",
    )
    review_gate = forms.BooleanField(
        required=False, initial=True, label="Review gate: a person approves each mechanism before it runs"
    )
    review_timeout_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=7 * 24 * 60, label="Review timeout (minutes)",
        help_text="With the gate on, a run waits for the reviewer. Empty: wait as long as it takes. "
                  "N: after N minutes the run continues without the mechanism (recorded as 'review timed out', "
                  "never as a rejection).",
    )

    class Meta:
        model = Experiment
        fields = [
            "name",
            "description",
            "groups",
            "repeats",
            "iterations",
            "strategy_interval",
            "research_interval",
            "objective",
            "preset",
            "budget_kind",
            "budget_value",
            "seed_base",
            "threads",
            "agent_backend",
            "llm_base_url",
            "llm_model",
            "llm_api_key",
            "acceptance_policy",
            "noise_k",
            "baseline_repeats",
            "confirmation_repeats",
            "real_confirmation_repeats",
            "review_gate",
            "review_timeout_minutes",
        ]
        widgets = {
            "objective": forms.RadioSelect,
            "budget_kind": forms.RadioSelect,
            "agent_backend": forms.RadioSelect,
            "acceptance_policy": forms.RadioSelect,
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read before validation copies submitted values onto the instance.
        self.stored_key_is_set = bool(self.instance.llm_api_key)
        self.fields["groups"].initial = ["A", "B", "C"]
        if settings.DEFAULT_AGENT_BACKEND == AgentBackend.LLM and settings.LLM_BASE_URL and self.instance.pk is None:
            self.initial["agent_backend"] = AgentBackend.LLM  # the instance's model default would win otherwise
        for name, default in (("llm_base_url", settings.LLM_BASE_URL), ("llm_model", settings.LLM_MODEL)):
            if default:
                self.fields[name].widget.attrs["placeholder"] = default
                self.fields[name].help_text = f"Blank: the server's default, {default}."
        for name, choices in (
            ("objective", Objective.choices),
            ("budget_kind", BudgetKind.choices),
            ("agent_backend", AgentBackend.choices),
            ("acceptance_policy", AcceptancePolicy.choices),
        ):
            # RadioSelect on a model field with a default would add a blank choice.
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = choices

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the experiment a name.")
        return name

    def clean_groups(self) -> list[str]:
        chosen = set(self.cleaned_data["groups"])
        # Canonical order, so runs and charts list groups the same way everywhere.
        return [value for value, _ in Group.choices if value in chosen]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        iterations, interval = data.get("iterations"), data.get("strategy_interval")
        if iterations is not None and interval is not None and interval > iterations:
            self.add_error("strategy_interval", f"K must not exceed T ({iterations}).")

        kind, budget = data.get("budget_kind"), data.get("budget_value")
        if budget is not None and kind:
            low, high, unit = (
                (MIN_SECONDS, MAX_SECONDS, "seconds") if kind == BudgetKind.SECONDS else (MIN_FLOPS, MAX_FLOPS, "FLOPs")
            )
            if not low <= budget <= high:
                self.add_error("budget_value", f"A {unit} budget must be between {low:g} and {high:g}.")

        if not data.get("review_gate"):
            data["review_timeout_minutes"] = None  # no review, no timeout

        if data.get("confirmation_repeats") is None and data.get("objective"):
            data["confirmation_repeats"] = default_repeats(data["objective"])
        self._clean_real_confirmation(data)
        self._clean_start(data)

        if data.get("agent_backend") == AgentBackend.LLM:
            # The server's defaults (LLM_BASE_URL, LLM_MODEL) fill what is left blank, and are stored with the
            # experiment so that its page and the API say which endpoint it used. The key is never stored.
            if "llm_base_url" not in self.errors:
                data["llm_base_url"] = data.get("llm_base_url") or settings.LLM_BASE_URL
            data["llm_model"] = data.get("llm_model") or settings.LLM_MODEL
            if not data.get("llm_base_url") and "llm_base_url" not in self.errors:
                self.add_error("llm_base_url", "An LLM backend needs a base URL (http or https); the server sets none.")
            if not data.get("llm_model"):
                self.add_error("llm_model", "An LLM backend needs a model name; the server sets none.")
        else:
            # The built-in agent uses none of these; don't store a key nobody needs.
            data["llm_base_url"] = data["llm_model"] = data["llm_api_key"] = ""
        return data

    def _clean_real_confirmation(self, data: dict[str, Any]) -> None:
        objective, real = data.get("objective"), data.get("real_confirmation_repeats")
        if not objective:
            return
        if objective != Objective.SURROGATE and real:
            self.add_error("real_confirmation_repeats", "Real confirmation is for surrogate experiments: a real "
                                                        "trainer's confirmation seeds already train for real.")
        elif real is None:
            data["real_confirmation_repeats"] = default_real_repeats(objective)

    def _clean_start(self, data: dict[str, Any]) -> None:
        """A tuned start puts the preset's best real-confirmed config into the experiment, with its provenance."""
        data["tuned_start"] = {}
        if (data.get("start") or START_DEFAULT) != START_TUNED or not data.get("preset"):
            return
        try:
            known = tuned_start(data["preset"])
        except TunedStartError as error:
            self.add_error("start", f"The tuned starts cannot be read: {error}")
            return
        if known is None:
            self.add_error("start", f"No tuned start is known for the {data['preset']} preset yet: use the default.")
            return
        data["tuned_start"] = known.as_dict()

    def save_and_start(self, user: Any) -> Experiment:
        """Create the experiment and its runs, and queue their first steps (all or nothing)."""
        if not self.is_valid():
            raise ValueError("save_and_start() needs a valid form")
        with transaction.atomic():
            experiment = self.save(commit=False)
            # A ModelForm keeps the model default (0) for a field absent from the data; the default here
            # depends on the objective (see clean).
            experiment.confirmation_repeats = self.cleaned_data["confirmation_repeats"]
            experiment.real_confirmation_repeats = self.cleaned_data["real_confirmation_repeats"]
            tuned = self.cleaned_data["tuned_start"]
            experiment.tuned_start = tuned
            if tuned:
                experiment.base_config = tuned["config"]
            experiment.created_by = user if getattr(user, "is_authenticated", False) else None
            experiment.save()
            control.create_runs(experiment)
            control.start_experiment(experiment)  # tasks are sent on commit
        return experiment
