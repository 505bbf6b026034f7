"""Mechanism attachments in every state, with a research session's artifacts, ladder and dry run."""

from __future__ import annotations

import hashlib

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment, MechanismEvent, ResearchSession
from runs.models import Experiment, LLMCall, Run

CODE_V1 = '''class Tabu:
    """Reject proposals that repeat a discarded change."""

    def filter(self, proposal, state):
        return {"accept": True}
'''
CODE_V2 = '''class Tabu:
    """Reject proposals that repeat a discarded change."""

    def filter(self, proposal, state):
        seen = {str(r["changes"]) for r in state["trace"] if r["status"] == "discard"}
        if str(proposal["changes"]) in seen:
            return {"accept": False, "reason": "tabu"}
        return {"accept": True}
'''
HOSTILE = "<script>alert('x')</script>"


def make_mechanism(name: str, code: str) -> Mechanism:
    return Mechanism.objects.create(
        code_hash=hashlib.sha256(code.encode()).hexdigest(), name=name, code=code,
        spec={"name": name, "hooks": ["filter"], "rationale": HOSTILE}, origin="llm", passed_ladder=True,
    )


def make_run(name: str = "review experiment", reference: bool = False) -> Run:
    experiment = Experiment.objects.create(name=name, groups=["C"], is_reference=reference)
    return Run.objects.create(experiment=experiment, group="C", repeat=1, level_strategy=True, level_research=True)


def make_attachment(
    status: str = AttachmentStatus.PENDING, run: Run | None = None, code: str = CODE_V2, cycle: int = 1
) -> MechanismAttachment:
    run = run or make_run()
    session = ResearchSession.objects.create(
        run=run, outer_cycle_index=cycle, status="produced", backend="llm",
        artifacts={
            "explore": {"prompt": "explore the trace", "reply": f"ideas {HOSTILE}", "parsed": {"ideas": ["tabu"]},
                        "error": "", "seconds": 1.25},
            "critique": {"prompt": "critique", "reply": "ok", "parsed": {"keep": "tabu"}, "error": "", "seconds": 0.5},
            "spec": {"prompt": "spec", "reply": "{}", "parsed": {"name": "Tabu", "hooks": ["filter"]}, "error": "",
                     "seconds": 0.7},
            "code": {"prompt": "code", "reply": code, "parsed": code, "error": "", "seconds": 2.0},
        },
    )
    LLMCall.objects.create(run=run, research_session=session, level="2", purpose="explore", backend="llm",
                           model="test-model", prompt="p", reply="r", tokens_in=1200, tokens_out=300,
                           latency_seconds=1.2)
    mechanism = make_mechanism("Tabu", code) if not Mechanism.objects.filter(code=code).exists() else \
        Mechanism.objects.get(code=code)
    attachment = MechanismAttachment.objects.create(
        run=run, mechanism=mechanism, session=session, status=status,
        ladder=[{"step": "spec", "ok": True, "detail": "spec parses", "seconds": 0.01},
                {"step": "static", "ok": True, "detail": "allowed imports only", "seconds": 0.02},
                {"step": "import", "ok": True, "detail": "imported in the sandbox", "seconds": 0.3},
                {"step": "dry_run", "ok": True, "detail": "changed 3 decisions", "seconds": 1.1}],
        dry_run_report={"traces": [{"trace": "paper_A1", "records": 31, "changed": {"proposal_rejected": 3},
                                    "changed_total": 3, "invalid": {"proposals": 2, "restrictions": 0},
                                    "invalid_total": 2, "hook_calls": {"filter": 30, "propose": 30},
                                    "max_seconds": {"filter": 0.002},
                                    "examples": [{"iteration": 5, "effect": "proposal_rejected", "detail": HOSTILE}],
                                    "invalid_examples": [{"iteration": 7, "kind": "proposals",
                                                          "detail": "proposed DEPTH 4→5", "reason": HOSTILE}]}],
                        "changed_decisions": 3, "invalid_decisions": 2, "inert": False, "type_errors": []},
    )
    MechanismEvent.objects.create(attachment=attachment, from_status="validating", to_status=status,
                                  note="ladder passed")
    return attachment
