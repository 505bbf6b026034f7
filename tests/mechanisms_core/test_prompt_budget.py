"""Every Level 2 round, and the repair prompt of every round, fits an 8K context window.

Measured with the real protocol and runner source and a trace far longer than any run's, with
replies that are as long as a rambling model makes them: the budget holds by construction.
"""

from __future__ import annotations

from typing import Any

import pytest

from mechanisms.context_budget import DEFAULT_CONTEXT_TOKENS, prompt_tokens
from mechanisms.protocol import protocol_description
from mechanisms.research import prompts as research_prompts
from runs.engine.level2 import RESEARCH_SYSTEM, runner_source


def long_trace(iterations: int) -> list[Any]:
    baseline = {"iteration": 0, "kind": "baseline", "changes": {}, "val_bpb": 2.5, "status": "baseline",
                "failure_class": "", "proposal_source": "", "hypothesis": "baseline"}
    return [baseline] + [
        {"iteration": i, "kind": "proposal", "val_bpb": 2.5 - i / 1e5, "status": "discard", "failure_class": "",
         "changes": {"MATRIX_LR": {"old": 0.01, "new": 0.01 + i / 1e4},
                     "ADAM_BETAS": {"old": [0.8, 0.95], "new": [0.9, 0.99]}},
         "proposal_source": "agent", "hypothesis": "because " * 60}
        for i in range(1, iterations)
    ]


def rounds() -> dict[str, str]:
    protocol = protocol_description()
    history = [{"index": k, "frozen": ["MATRIX_LR"] * 4, "guidance": "g" * 3000, "reasons": {"x": "y" * 500}}
               for k in range(30)]
    explore = research_prompts.explore_prompt(protocol, runner_source(), long_trace(400), history, ["m"] * 10)
    explored: dict[str, Any] = {"diagnosis": "d" * 6000, "candidates": [
        {"name": f"idea_{i}", "field": "f" * 2000, "idea": "i" * 6000, "hooks": ["restrict"]} for i in range(4)]}
    spec = {"name": "x", "class_name": "X", "hooks": ["restrict"], "rationale": "r" * 6000, "state_kept": "s" * 6000,
            "expected_effect": "e" * 6000}
    return {
        "explore": explore,
        "critique": research_prompts.critique_prompt(explored),
        "specify": research_prompts.specify_prompt(explored, explored["candidates"][0]),
        "generate": research_prompts.generate_prompt(protocol, spec),
    }


@pytest.mark.parametrize("round_name", research_prompts.ROUNDS)
def test_each_round_and_its_repair_fit_an_8k_window(round_name: str) -> None:
    prompt = rounds()[round_name]
    reply = research_prompts.REPLY_TOKENS[round_name]
    assert prompt_tokens(RESEARCH_SYSTEM, prompt) + reply <= DEFAULT_CONTEXT_TOKENS
    repair = research_prompts.repair_prompt(round_name, prompt, "a long reply " * 5000, "an error " * 1000)
    assert prompt_tokens(RESEARCH_SYSTEM, repair) + reply <= DEFAULT_CONTEXT_TOKENS
    assert repair.startswith(prompt.rstrip())  # the request first: a local server reuses its computed prefix
    assert repair.index("an error") > len(prompt.rstrip())  # the defect after it, nearest the reply


def test_explore_gives_a_runner_summary_and_the_latest_trace_not_the_whole_source() -> None:
    prompt = rounds()["explore"]
    source = runner_source()
    assert len(source) > 30_000 and len(prompt) < 20_000
    assert "- def execute_step(run_id, ticket, worker)" in prompt  # the runner's public functions
    assert "runs/engine/mechanism_bridge.py: " in prompt and "  - def filter(proposal, state): (accepted" in prompt
    assert '"iteration": 399' in prompt and '"iteration": 0,' in prompt  # the latest, and the baseline
    assert "earlier rows left out to fit the context window" in prompt
    assert "None" in protocol_description() and "check for None" in prompt  # the dry run's iteration-0 trap
