"""Opt-in: the real local model of `bootstrap.py up --local-llm` drives all three levels.

Runs only with BILEVEL_LOCAL_LLM_TEST=1 on a machine where `up --local-llm` installed .venv-llm and joined
the model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M; the suite does not compile llama.cpp). On 2 shared CPU cores it
takes tens of minutes. It checks the plumbing against the real server: every proposal is
recorded (valid or with its reason), every prompt fits the context window, every Level 2 session ends
with a status and a reason. How often a small model's replies are usable is measured, not asserted:
bench/local_llm_measure.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from bootstrap import LLM_PYTHON, local_model_path
from mechanisms.context_budget import DEFAULT_CONTEXT_TOKENS, estimate_tokens
from mechanisms.models import ResearchSession, SessionStatus
from runs.management.commands.launch import free_port
from runs.models import IterationKind, IterationStatus, LLMCall
from runs.ops.process_tools import wait_for_port
from tests.engine.helpers import drive_with_research, make_experiment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (os.environ.get("BILEVEL_LOCAL_LLM_TEST") and LLM_PYTHON.exists()
                            and local_model_path().exists()),
                       reason="opt-in: BILEVEL_LOCAL_LLM_TEST=1 after bootstrap.py up --local-llm installed .venv-llm"),
]


THREADS = max(1, (os.cpu_count() or 2) // 2)  # as the launcher gives it


@pytest.fixture(scope="module")
def local_llm() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [str(LLM_PYTHON), "-m", "llama_cpp.server", "--model", str(local_model_path()), "--model_alias", "local",
         "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", str(DEFAULT_CONTEXT_TOKENS), "--n_threads", str(THREADS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port("127.0.0.1", port, timeout=300, alive=lambda: server.poll() is None)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_local_model_drives_every_level_and_every_failure_has_a_reason(local_llm: str) -> None:
    experiment = make_experiment(groups=["C"], iterations=4, strategy_interval=2, research_interval=1,
                                 review_gate=False, agent_backend="llm", llm_base_url=local_llm, llm_model="local")
    run = experiment.runs.get()
    drive_with_research(run, max_steps=40)
    run.refresh_from_db()
    assert run.is_finished, run.status_detail
    proposals = run.iteration_set.filter(kind=IterationKind.PROPOSAL)
    assert proposals.count() == 4
    assert all(p.error for p in proposals if p.status == IterationStatus.INVALID_PROPOSAL)
    calls = LLMCall.objects.filter(run=run) | LLMCall.objects.filter(research_session__run=run)
    assert {c.level for c in calls} >= {"1", "1.5", "2"}
    assert all(estimate_tokens(c.prompt) < DEFAULT_CONTEXT_TOKENS for c in calls)
    for session in ResearchSession.objects.filter(run=run):
        assert session.status in (SessionStatus.PRODUCED, SessionStatus.FAILED) and session.status_detail
