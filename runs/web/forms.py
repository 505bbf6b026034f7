"""The dashboard's iteration-table filter, and what the experiment form's page shows beside the form (the form
itself is engine/experiment_form.py: the API uses it too)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from trainer.schema import KNOBS, PRESET_SETTINGS, PRESETS
from trainer.tuned_start import TunedStartError, tuned_start

from ..engine.confirmation import default_real_repeats
from ..engine.experiment_form import GROUP_HELP, ExperimentForm
from ..engine.objective import REAL_TRAINING_SECONDS
from ..models import Group, IterationKind, IterationStatus, Objective


def form_page_context(form: ExperimentForm) -> dict[str, Any]:
    """What the experiment form's page shows beside the form: tuned starts known, real confirmation's cost."""
    try:
        starts = {preset: start for preset in PRESETS if (start := tuned_start(preset)) is not None}
    except TunedStartError:
        starts = {}  # the form's own validation says why when a tuned start is chosen
    return {
        "form": form,
        "group_help": GROUP_HELP,
        "server_llm_key_set": bool(settings.LLM_API_KEY),
        "tuned_starts": starts,
        "real_training_seconds": REAL_TRAINING_SECONDS,
        "default_real_repeats": default_real_repeats(Objective.SURROGATE),
        "real_reference_flops": PRESET_SETTINGS[PRESETS[0]].default_flops_budget,
    }


PER_PAGE_CHOICES = (25, 50, 100, 200)
DEFAULT_PER_PAGE = 50
CHECKBOXES = forms.CheckboxSelectMultiple


class IterationFilterForm(forms.Form):
    """Query parameters of an iteration table (page, filters, sort); the same ones drive exports."""

    status = forms.MultipleChoiceField(choices=IterationStatus.choices, required=False, widget=CHECKBOXES)
    kind = forms.MultipleChoiceField(choices=IterationKind.choices, required=False, widget=CHECKBOXES)
    group = forms.MultipleChoiceField(choices=Group.choices, required=False, widget=CHECKBOXES)
    param = forms.ChoiceField(
        choices=[("", "any parameter"), *((name, name) for name in KNOBS)], required=False, label="Changed"
    )
    q = forms.CharField(required=False, max_length=200, label="Hypothesis contains")
    min_bpb = forms.FloatField(required=False, label="val_bpb ≥")
    max_bpb = forms.FloatField(required=False, label="val_bpb ≤")
    sort = forms.ChoiceField(
        required=False,
        choices=[
            ("index", "index ↑"),
            ("-index", "index ↓"),
            ("val_bpb", "val_bpb ↑"),
            ("-val_bpb", "val_bpb ↓"),
            ("delta", "Δ ↑"),
            ("-delta", "Δ ↓"),
            ("seconds", "seconds ↑"),
            ("-seconds", "seconds ↓"),
        ],
    )
    per_page = forms.TypedChoiceField(
        required=False, coerce=int, empty_value=None, choices=[(n, str(n)) for n in PER_PAGE_CHOICES]
    )
    page = forms.IntegerField(required=False, min_value=1)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        low, high = data.get("min_bpb"), data.get("max_bpb")
        if low is not None and high is not None and low > high:
            self.add_error("max_bpb", "The upper bound is below the lower bound.")
        return data
