"""The LLM agent against a real HTTP server speaking the OpenAI protocol, with scripted replies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from runs.control import create_runs
from runs.engine import Step
from runs.lease import LeaseKeeper, claim_step
from runs.mechanism_bridge import NoMechanisms
from runs.models import Experiment, IterationKind, IterationStatus, LLMCall, Run
from runs.proposals import propose as propose_change
from runs.state import RunState
from tests.openai_stub import ScriptedOpenAI, scripted_openai
from trainer.schema import config_to_json, default_config

pytestmark = [pytest.mark.django_db]


def reply(changes: dict[str, Any], hypothesis: str = "it should help") -> dict[str, Any]:
    return {"content": json.dumps({"changes": changes, "hypothesis": hypothesis})}


@pytest.fixture
def stub() -> Iterator[ScriptedOpenAI]:
    yield from scripted_openai()


@pytest.fixture
def llm_run(stub: ScriptedOpenAI) -> Run:
    experiment = Experiment.objects.create(
        name="llm",
        groups=["A"],
        iterations=5,
        agent_backend="llm",
        llm_base_url=stub.base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
    )
    run = create_runs(experiment)[0]
    config = config_to_json(default_config("cpu-tiny"))
    run.iteration_set.create(
        index=0,
        kind=IterationKind.BASELINE,
        status=IterationStatus.BASELINE,
        config=config,
        val_bpb=2.5,
        evaluations=[2.5],
    )
    changed = {**config, "MATRIX_LR": 0.04}
    run.iteration_set.create(
        index=1,
        kind=IterationKind.PROPOSAL,
        status=IterationStatus.DISCARD,
        config=changed,
        changes={"MATRIX_LR": {"old": 0.02, "new": 0.04}},
        val_bpb=2.6,
    )
    Run.objects.filter(pk=run.pk).update(baseline_val_bpb=2.5, best_val_bpb=2.5)
    run.refresh_from_db()
    return run


def propose(run: Run) -> Any:
    assert claim_step(run.pk, run.step_ticket, "test-owner")
    step = Step(run.pk, "test-owner", LeaseKeeper(run.pk, "test-owner"))
    return propose_change(step.ctx, NoMechanisms())


fast_llm = override_settings(LLM_RETRY_BACKOFF_SECONDS=0.01, LLM_TIMEOUT_SECONDS=1.0)


@fast_llm
def test_valid_json_reply_becomes_a_typed_proposal_and_every_call_is_stored(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [reply({"TOTAL_BATCH_SIZE": 2048, "WARMDOWN_RATIO": "0.3"})]
    proposed = propose(llm_run)
    assert proposed.changes == {
        "TOTAL_BATCH_SIZE": {"old": 4096, "new": 2048},
        "WARMDOWN_RATIO": {"old": 0.5, "new": 0.3},
    }
    assert proposed.hypothesis == "it should help"
    assert stub.requests[0]["response_format"] == {"type": "json_object"}
    assert stub.requests[0]["model"] == "test-model"
    prompt = stub.requests[0]["messages"][1]["content"]
    assert '"MATRIX_LR": [0.02, 0.04]' in prompt  # the structured trace, not prose
    call = LLMCall.objects.get(run=llm_run)
    assert (call.level, call.purpose, call.tokens_in, call.tokens_out, call.error) == ("1", "propose", 100, 20, "")


@fast_llm
def test_json_in_code_fences_is_accepted(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [{"content": 'Sure!\n```json\n{"changes": {"WEIGHT_DECAY": 0.1}, "hypothesis": "h"}\n```'}]
    assert propose(llm_run).changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}


@fast_llm
@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"content": "I think you should lower the learning rate."}, "no JSON object"),
        (reply({"LR": 0.1}), "unknown parameter 'LR'"),
        (reply({"TOTAL_BATCH_SIZE": 3000}), "TOTAL_BATCH_SIZE must be a power of two"),
        (reply({"MATRIX_LR": 0.04}), "already evaluated"),
        (reply({"DEPTH": 6}), "DEPTH is locked"),
        (reply({"MATRIX_LR": "fast"}), "MATRIX_LR must be a number"),
    ],
)
def test_bad_replies_are_refused_and_the_agent_is_reasked_with_the_reason(
    llm_run: Run, stub: ScriptedOpenAI, bad: dict[str, Any], reason: str
) -> None:
    stub.script = [bad, reply({"WEIGHT_DECAY": 0.1})]
    proposed = propose(llm_run)
    assert proposed.changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}
    assert len(proposed.rejected) == 1 and reason in proposed.rejected[0]["reason"]
    assert reason in stub.requests[1]["messages"][1]["content"]  # the re-ask says why


@fast_llm
def test_empty_reply_and_rate_limit_are_retried(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [{"content": ""}, {"status": 429}, {"status": 503}, reply({"WEIGHT_DECAY": 0.1})]
    proposed = propose(llm_run)
    assert proposed.changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}
    errors = list(LLMCall.objects.filter(run=llm_run).order_by("pk").values_list("error", flat=True))
    assert errors[0] == "empty reply"
    assert "RateLimitError" in errors[1] and "InternalServerError" in errors[2] and errors[3] == ""


@fast_llm
def test_timeout_and_dropped_connection_are_retried(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [{"hang": 5}, {"close": True}, reply({"WEIGHT_DECAY": 0.1})]
    assert propose(llm_run).changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}
    errors = list(LLMCall.objects.filter(run=llm_run).order_by("pk").values_list("error", flat=True))
    assert "APITimeoutError" in errors[0] and "APIConnectionError" in errors[1]


@fast_llm
def test_backend_without_json_mode_is_asked_again_without_it(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [{"reject_response_format": True}, reply({"WEIGHT_DECAY": 0.1})]
    assert propose(llm_run).changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}
    assert "response_format" in stub.requests[0] and "response_format" not in stub.requests[1]


@fast_llm
def test_endless_garbage_is_recorded_as_an_invalid_proposal_not_a_silent_noop(
    llm_run: Run, stub: ScriptedOpenAI
) -> None:
    stub.script = [{"content": "no"}] * 4
    assert claim_step(llm_run.pk, llm_run.step_ticket, "owner")
    outcome = Step(llm_run.pk, "owner", LeaseKeeper(llm_run.pk, "owner")).run()

    assert outcome == IterationStatus.INVALID_PROPOSAL
    iteration = llm_run.iteration_set.get(index=2)
    assert iteration.status == IterationStatus.INVALID_PROPOSAL and iteration.val_bpb is None
    assert len(iteration.rejected_attempts) == 4
    assert "no valid proposal after 4 attempts" in iteration.error
    assert RunState.load(Run.objects.get(pk=llm_run.pk)).proposals_done == 2  # it counts toward T
