"""The LLM agent against a real HTTP server speaking the OpenAI protocol, with scripted replies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from mechanisms.context_budget import prompt_tokens
from runs.engine.agents.base import ProposalRequest, StrategyRequest
from runs.engine.agents.factory import build_llm_agent, forget_endpoints
from runs.engine.agents.prompts import (
    PROPOSAL_REPLY_TOKENS,
    PROPOSER_SYSTEM,
    STRATEGIST_SYSTEM,
    STRATEGY_REPLY_TOKENS,
    proposal_prompt,
    strategy_prompt,
)
from runs.engine.control import create_runs
from runs.engine.lease import LeaseKeeper, claim_step
from runs.engine.mechanism_bridge import NoMechanisms
from runs.engine.proposals import propose as propose_change
from runs.engine.state import RunState
from runs.engine.step import Step
from runs.models import Experiment, IterationKind, IterationStatus, LLMCall, Run
from tests.openai_stub import ScriptedOpenAI, scripted_openai
from trainer.schema import config_to_json, default_config, schema_json

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


@pytest.fixture(autouse=True)
def fresh_endpoints() -> Iterator[None]:
    """Each test's stub is a new endpoint: nothing learnt by an earlier test applies to it."""
    forget_endpoints()
    yield
    forget_endpoints()


@fast_llm
def test_valid_json_reply_becomes_a_typed_proposal_and_every_call_is_stored(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [reply({"TOTAL_BATCH_SIZE": 2048, "WARMDOWN_RATIO": "0.3"})]
    proposed = propose(llm_run)
    assert proposed.changes == {
        "TOTAL_BATCH_SIZE": {"old": 4096, "new": 2048},
        "WARMDOWN_RATIO": {"old": 0.5, "new": 0.3},
    }
    assert proposed.hypothesis == "it should help"
    response_format = stub.requests[0]["response_format"]
    assert response_format["type"] == "json_schema"  # decoding constrained to the reply's shape
    changes_schema = response_format["json_schema"]["schema"]["properties"]["changes"]["properties"]
    assert changes_schema["WARMUP_RATIO"] == {"type": "number"} and "DEPTH" not in changes_schema  # locked
    assert stub.requests[0]["model"] == "test-model"
    assert stub.requests[0]["max_tokens"] == PROPOSAL_REPLY_TOKENS  # a small model under a grammar may not stop
    prompt = stub.requests[0]["messages"][1]["content"]
    # History as a table of old → new, never in the reply's JSON shape (small models copy that shape).
    assert "1 | MATRIX_LR 0.02 → 0.04 | 2.6000 | discarded" in prompt
    assert "[0.02, 0.04]" not in prompt and prompt.count('{"changes"') == 1  # the reply's shape, once
    call = LLMCall.objects.get(run=llm_run)
    assert (call.level, call.purpose, call.tokens_in, call.tokens_out, call.error) == ("1", "propose", 100, 20, "")
    assert call.timeout_seconds == 1.0


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


@fast_llm
def test_a_shape_defect_is_reasked_with_the_defect_and_the_corrected_shape(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [reply({"WARMUP_RATIO": [0.1, 0.2]}), reply({"WARMUP_RATIO": 0.2})]
    proposed = propose(llm_run)
    assert proposed.changes == {"WARMUP_RATIO": {"old": 0.0, "new": 0.2}}
    reask = stub.requests[1]["messages"][1]["content"]
    assert "Defect: WARMUP_RATIO must be a number, got [0.1, 0.2]" in reask
    assert 'You sent: {"changes": {"WARMUP_RATIO": [0.1, 0.2]}}' in reask
    assert 'Corrected shape: {"changes": {"WARMUP_RATIO": 0.2}' in reask
    assert "Keep your idea" in reask and "something else" not in reask


@fast_llm
@pytest.mark.parametrize(
    ("refused", "modes"),
    [
        # llama-cpp-python's server: 500 to json_schema, a schema inside json_object works.
        ({"json_schema": 500}, ["json_schema", "json_object", "json_object"]),
        ({"json_schema": 400, "json_object": 500}, ["json_schema", "json_object", "json_object", None, None]),
    ],
)
def test_structured_output_falls_back_on_a_refusal_and_the_endpoint_remembers_it(
    llm_run: Run, stub: ScriptedOpenAI, refused: dict[str, int], modes: list[str | None]
) -> None:
    stub.refuse_formats = refused
    stub.script = [reply({"WEIGHT_DECAY": 0.1}), {"content": "plain text, no JSON"}]
    assert propose(llm_run).changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}
    # The engine builds a new agent every iteration: the working mode is asked for at once, not rediscovered.
    agent = build_llm_agent(llm_run)
    assert agent.complete(level="1", purpose="propose", system="s", prompt="p", schema={"type": "object"})
    sent = [r.get("response_format", {}).get("type") for r in stub.requests]
    assert sent == modes
    assert stub.requests[1]["response_format"]["schema"]["required"] == ["changes", "hypothesis"]
    errors = list(LLMCall.objects.filter(run=llm_run).order_by("pk").values_list("error", flat=True))
    refusals = len(modes) - 2  # one successful request from each of the two agents
    assert all("response_format" in e for e in errors[:refusals]) and not any(errors[refusals:])


def long_trace_request(iterations: int) -> ProposalRequest:
    config = config_to_json(default_config("cpu-tiny"))
    space = schema_json("cpu-tiny")
    trace = [
        {"iteration": 0, "kind": "baseline", "changes": {}, "val_bpb": 2.5, "status": "baseline", "failure_class": ""}
    ] + [
        {
            "iteration": i,
            "kind": "proposal",
            "changes": {
                "MATRIX_LR": {"old": 0.01, "new": 0.01 + i / 1000},
                "ADAM_BETAS": {"old": [0.8, 0.95], "new": [0.85, 0.99]},
            },
            "val_bpb": 2.5 + i / 10000,
            "status": "discard",
            "failure_class": "",
            "hypothesis": "x" * 300,
        }
        for i in range(1, iterations)
    ]
    state = {
        "search_space": space,
        "config": config,
        "frozen": [],
        "guidance": "g" * 2000,
        "best": {"val_bpb": 2.5, "iteration": 0},
        "baseline": {"val_bpb": 2.5, "noise_sd": 0.004},
        "trace": trace,
    }
    allowed = [k["name"] for k in space if not k["locked"]]
    return ProposalRequest(state=state, allowed=allowed, extra_sections=["m" * 4000] * 8, rejection="r" * 500)


@pytest.mark.parametrize("context", [8192, 4096])
def test_level1_and_level15_prompts_fit_the_context_window_however_long_the_run(context: int) -> None:
    request = long_trace_request(500)
    proposal = proposal_prompt(request, context)
    assert prompt_tokens(PROPOSER_SYSTEM, proposal) + PROPOSAL_REPLY_TOKENS <= context
    assert "earlier rows left out" in proposal and "| 499 |" not in proposal and "499 | MATRIX_LR" in proposal
    strategy = strategy_prompt(StrategyRequest(state=request.state, rule_summary="s", per_parameter={}), context)
    assert prompt_tokens(STRATEGIST_SYSTEM, strategy) + STRATEGY_REPLY_TOKENS <= context
    assert "0 | (baseline config)" in strategy  # the baseline row is always kept
    # A discarded change is marked as not applied, so guidance cannot mistake it for a success.
    assert "| discarded (not better; not applied)" in strategy and 'Only rows marked "KEPT" improved' in strategy


@fast_llm
def test_timeouts_follow_the_endpoints_measured_speed(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [reply({"WEIGHT_DECAY": 0.1})]
    agent = build_llm_agent(llm_run)
    assert agent.timeout_for(5000) == 1.0  # not measured yet: the configured minimum
    agent.complete(level="1", purpose="propose", system="s", prompt="p")
    measured = agent.profile.seconds_per_token
    assert measured is not None and measured > 0
    agent.profile.seconds_per_token = 0.05  # as slow as a 1.5B model on one CPU thread
    assert build_llm_agent(llm_run).timeout_for(5000) == 5000 * 0.05 * 4  # remembered for the endpoint


@fast_llm
def test_an_endpoint_that_refuses_max_tokens_is_asked_without_it(llm_run: Run, stub: ScriptedOpenAI) -> None:
    refusal = {"error": {"message": "Unsupported parameter: 'max_tokens'; use 'max_completion_tokens'"}}
    stub.script = [{"status": 400, "body": refusal}, reply({"WEIGHT_DECAY": 0.1})]
    assert propose(llm_run).changes == {"WEIGHT_DECAY": {"old": 0.0, "new": 0.1}}
    assert "max_tokens" in stub.requests[0] and "max_tokens" not in stub.requests[1]


@fast_llm
def test_an_out_of_range_value_is_not_shown_back_as_the_correction(llm_run: Run, stub: ScriptedOpenAI) -> None:
    stub.script = [reply({"ADAM_BETAS": [3.05, 2.17], "WEIGHT_DECAY": 0.1}), reply({"WEIGHT_DECAY": 0.1})]
    propose(llm_run)
    reask = stub.requests[1]["messages"][1]["content"]
    assert "ADAM_BETAS[0] must be strictly between 0 and 1, got 3.05" in reask
    assert 'Corrected shape: {"changes": {"ADAM_BETAS": [0.85, 0.95], "WEIGHT_DECAY": 0.1}' in reask


def test_the_reply_example_turns_to_another_parameter_each_iteration() -> None:
    examples = set()
    for iteration in (1, 2, 3):
        request = long_trace_request(3)
        request.rejection, request.state["iteration"] = None, iteration
        prompt = proposal_prompt(request)
        examples.add(prompt.split("in exactly this shape:\n", 1)[1].split("\n", 1)[0])
    assert len(examples) == 3  # a small model copies the example: one fixed example became repeated duplicates
