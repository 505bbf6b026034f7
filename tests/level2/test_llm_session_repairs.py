"""A Level 2 session against a real OpenAI-protocol server: how its repairs are asked."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.test import override_settings

from mechanisms.models import ResearchSession, SessionStatus
from mechanisms.research.prompts import REPAIR_TEMPERATURE, REPLY_TOKENS
from runs.engine.agents.factory import forget_endpoints
from runs.engine.level2 import execute_research_session
from tests.engine.helpers import make_experiment
from tests.openai_stub import ScriptedOpenAI, scripted_openai

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stub() -> Iterator[ScriptedOpenAI]:
    forget_endpoints()
    yield from scripted_openai()
    forget_endpoints()


@override_settings(LLM_RETRY_BACKOFF_SECONDS=0.0)
def test_repairs_are_sampled_at_the_repair_temperature_and_first_asks_at_the_endpoints_default(
        stub: ScriptedOpenAI) -> None:
    experiment = make_experiment(name="repairs", groups=["C"], iterations=4, strategy_interval=2,
                                 agent_backend="llm", llm_base_url=stub.base_url, llm_model="m", llm_api_key="k")
    run = experiment.runs.get()
    stub.script = [{"content": "not json at all"}] * 3  # explore, refused, then its two repairs
    session = ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm")

    assert execute_research_session(session.pk) == SessionStatus.FAILED

    sent = [request for request in stub.requests if request.get("messages")]
    assert len(sent) == 3
    assert "temperature" not in sent[0]
    assert [request["temperature"] for request in sent[1:]] == [REPAIR_TEMPERATURE, REPAIR_TEMPERATURE]
    assert "YOUR PREVIOUS REPLY TO THIS REQUEST WAS REFUSED" in json.dumps(sent[1]["messages"])


@override_settings(LLM_RETRY_BACKOFF_SECONDS=0.0)
def test_a_reply_the_endpoint_cut_off_at_max_tokens_is_refused_saying_so(stub: ScriptedOpenAI) -> None:
    experiment = make_experiment(name="cut-off", groups=["C"], iterations=4, strategy_interval=2,
                                 agent_backend="llm", llm_base_url=stub.base_url, llm_model="m", llm_api_key="k")
    run = experiment.runs.get()
    cut_off = {"content": '{"evidence": [], "diagnosis": "the run keeps changing MATRIX_LR and',
               "finish_reason": "length"}
    stub.script = [cut_off, {"content": "not json at all"}, cut_off]
    session = ResearchSession.objects.create(run=run, outer_cycle_index=1, backend="llm")

    assert execute_research_session(session.pk) == SessionStatus.FAILED

    session.refresh_from_db()
    errors = [attempt["error"] for attempt in session.artifacts["rounds"]]
    note = (f". Your reply was cut off at the reply limit ({REPLY_TOKENS['explore']} tokens) before the JSON ended: "
            "write shorter texts, one or two sentences each.")
    assert errors[0].startswith("the reply is not valid JSON") and errors[0].endswith(note)
    assert errors[1] == "the reply contains no JSON object"  # a reply that ended by itself is not called cut off
    assert errors[2].endswith(note)
    sent = [request for request in stub.requests if request.get("messages")]
    assert note in json.dumps(sent[1]["messages"])
