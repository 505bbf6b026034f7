"""Clone and edit: the new-experiment form filled with an existing experiment's settings. Submitting
it creates a new experiment through the ordinary create view; the original is never changed."""

from __future__ import annotations

from django.forms.models import model_to_dict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from ..engine.experiment_form import START_DEFAULT, START_TUNED, ExperimentForm
from ..models import Experiment
from .forms import form_page_context


def clone_initial(experiment: Experiment) -> dict[str, object]:
    # The LLM API key is write-only: it is never rendered, so it cannot be carried over.
    fields = [name for name in ExperimentForm.base_fields if name != "llm_api_key"]
    initial = model_to_dict(experiment, fields=fields)
    initial["name"] = f"{experiment.name} (copy)"[:200]
    # A tuned start is chosen again (it takes the best tuned config known now, with its provenance).
    initial["start"] = START_TUNED if experiment.tuned_start else START_DEFAULT
    return initial


@require_GET
def experiment_clone(request: HttpRequest, experiment_id: int) -> HttpResponse:
    original = get_object_or_404(Experiment, pk=experiment_id)
    context = {**form_page_context(ExperimentForm(initial=clone_initial(original))), "clone_of": original}
    return render(request, "runs/experiment_form.html", context)
