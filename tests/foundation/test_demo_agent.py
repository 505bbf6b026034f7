"""The launcher's demo uses the default agent: the LLM that `up --local-llm` serves, or says why not."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from runs.models import Experiment

pytestmark = pytest.mark.django_db


def start_demo() -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("start_demo", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@override_settings(DEFAULT_AGENT_BACKEND="llm", LLM_BASE_URL="http://127.0.0.1:5999/v1", LLM_MODEL="qwen-local")
def test_with_a_default_llm_the_demo_runs_with_it() -> None:
    out, err = start_demo()
    demo = Experiment.objects.get()
    assert demo.agent_backend == "llm" and demo.name == "Demo: LLM agent qwen-local on cpu-tiny (Levels 1 + 1.5 + 2)"
    assert (demo.llm_base_url, demo.llm_model) == ("", "")  # follows the launcher's server, wherever it listens
    assert demo.runs.get().status == "queued" and demo.groups == ["C"]
    assert "demo experiment started with the LLM qwen-local" in out and err == ""
    start_demo()  # once
    assert Experiment.objects.count() == 1


@override_settings(DEFAULT_AGENT_BACKEND="llm", LLM_BASE_URL="", LLM_MODEL="")
def test_a_default_llm_without_an_endpoint_gives_the_builtin_demo_and_says_why() -> None:
    out, err = start_demo()
    assert Experiment.objects.get().agent_backend == "builtin"
    assert "LLM_BASE_URL or LLM_MODEL is not set: the demo uses the built-in agent" in err
    assert "demo experiment started with the built-in agent" in out


@override_settings(DEFAULT_AGENT_BACKEND="builtin", LLM_BASE_URL="http://127.0.0.1:5999/v1", LLM_MODEL="m")
def test_without_a_default_llm_the_demo_is_the_builtin_one() -> None:
    _, err = start_demo()
    assert Experiment.objects.get().agent_backend == "builtin" and err == ""
