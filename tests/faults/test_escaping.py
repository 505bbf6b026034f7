"""Stored text written by LLMs, generated code and users stays text on every page.

Hostile strings go into every text the pages show: an experiment's name and description, a run's
status detail, hypotheses, decision reasons, errors, changes, guidance, the four research
artifacts, a mechanism's name, spec and code, ladder details, dry-run examples, review comments,
event notes, LLM prompts and replies. Every HTML page (enumerated from the resolver) must contain
them only escaped; in Chromium, no dialog opens and no injected element exists.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from django.test import Client

from mechanisms.models import Mechanism, MechanismAttachment, MechanismEvent, ResearchSession
from runs.models import Experiment, Iteration, LLMCall, OuterCycle, Run
from tests.conftest import LiveServer, log_in

from .conftest import record_dialogs
from .routes import all_routes

IMG = "<img src=x onerror=alert(1)>"
ATTR = "\"'><svg onload=alert(2)>"
SCRIPT = "</script><script>alert(3)</script>"
HOSTILE = IMG + ATTR + SCRIPT
# What must never appear in HTML: each payload's executable start.
RAW_MARKERS = ("<img src=x", "<svg onload", "<script>alert(3)", 'href="javascript:')
INJECTED = "img[src='x'], svg[onload], script:not([src]):not([type])"


def hostile_world(users: Any) -> dict[str, int]:
    experiment = Experiment.objects.create(
        name=f"exp {HOSTILE}", description=HOSTILE, groups=["C"], iterations=4, strategy_interval=2,
        created_by=users.reviewer, agent_backend="llm", llm_base_url="javascript:alert(4)", llm_model=HOSTILE,
    )
    other = Experiment.objects.create(name=f"other {HOSTILE}", groups=["C"], is_reference=True)
    run = Run.objects.create(experiment=experiment, group="C", repeat=1, level_strategy=True, level_research=True,
                             status="running", status_detail=HOSTILE, baseline_val_bpb=2.7, best_val_bpb=2.6,
                             noise_sd=0.01, proposals_done=2, live_progress={"iteration": 3, "points": [[1, 5.0]]})
    Run.objects.create(experiment=other, group="C", repeat=1, baseline_val_bpb=2.7, best_val_bpb=2.65,
                       proposals_done=2, status="completed")
    Iteration.objects.create(run=run, index=0, kind="baseline", status="baseline", val_bpb=2.7, hypothesis=HOSTILE)
    Iteration.objects.create(
        run=run, index=1, kind="proposal", status="keep", val_bpb=2.6, best_before=2.7, hypothesis=HOSTILE,
        decision_reason=HOSTILE, proposal_source=f"mechanism:{HOSTILE}"[:120],
        changes={"WINDOW_PATTERN": {"old": "SSSL", "new": HOSTILE}, HOSTILE: {"old": HOSTILE, "new": 1}},
        mechanism_effects=[{"mechanism": HOSTILE, "hook": "filter", "effect": HOSTILE, "detail": HOSTILE}],
        rejected_attempts=[{"attempt": 1, "source": "agent", "reason": HOSTILE, "changes": {HOSTILE: HOSTILE}}],
        curve=[[1, 4.0], [2, 3.5]],
    )
    Iteration.objects.create(run=run, index=2, kind="proposal", status="crash", failure_class="crashed",
                             error=HOSTILE, hypothesis=HOSTILE, best_before=2.6)
    Iteration.objects.create(run=other.runs.get(), index=0, kind="baseline", status="baseline", val_bpb=2.7,
                             hypothesis=HOSTILE)
    OuterCycle.objects.create(run=run, index=1, after_iteration=2, frozen=["MATRIX_LR"], newly_frozen=["MATRIX_LR"],
                              guidance=HOSTILE, strategy=HOSTILE, reasons={"MATRIX_LR": HOSTILE, "agent": HOSTILE})
    code = f'class Hostile:\n    """{HOSTILE}"""\n\n    def filter(self, proposal, state):\n' \
           f'        return {{"accept": False, "reason": {HOSTILE!r}}}\n'
    session = ResearchSession.objects.create(
        run=run, outer_cycle_index=1, status="produced", backend="llm", status_detail=HOSTILE,
        artifacts={key: {"prompt": HOSTILE, "reply": HOSTILE, "parsed": {"x": HOSTILE}, "error": HOSTILE,
                         "seconds": 1.0} for key in ("explore", "critique", "spec")} | {"code": code},
    )
    LLMCall.objects.create(run=run, research_session=session, level="2", purpose="explore", backend="llm",
                           model=HOSTILE[:200], prompt=HOSTILE, reply=HOSTILE, error=HOSTILE)
    ids: dict[str, int] = {"experiment_id": experiment.pk, "run_id": run.pk}
    for version in (1, 2):  # two versions, so the review page also shows a diff
        body = code + f"# version {version} {HOSTILE}\n"
        mechanism = Mechanism.objects.create(code_hash=hashlib.sha256(body.encode()).hexdigest(), name=HOSTILE[:120],
                                             code=body, spec={"name": HOSTILE, "rationale": HOSTILE},
                                             origin="llm", passed_ladder=True)
        attachment = MechanismAttachment.objects.create(
            run=run, mechanism=mechanism, session=session, status="pending" if version == 2 else "rejected",
            status_detail=HOSTILE, review_comment=HOSTILE, reviewed_by=users.reviewer if version == 1 else None,
            ladder=[{"step": "static", "ok": True, "detail": HOSTILE, "seconds": 0.1}],
            dry_run_report={"traces": [{"trace": HOSTILE, "records": 3, "changed": {HOSTILE: 1}, "changed_total": 1,
                                        "hook_calls": {"filter": 3}, "max_seconds": {"filter": 0.1},
                                        "examples": [{"iteration": 1, "effect": HOSTILE, "detail": HOSTILE}]}],
                            "changed_decisions": 1, "inert": False, "type_errors": [HOSTILE]},
            hook_calls={"filter": 3}, decisions_changed=1,
        )
        MechanismEvent.objects.create(attachment=attachment, from_status="validating", to_status="pending",
                                      note=HOSTILE, actor=users.reviewer)
        ids.update(attachment_id=attachment.pk, mechanism_id=mechanism.pk)
    experiment.library_mechanisms.add(mechanism)
    ids.update(object_id=run.pk, content_type_id=1, id=1, other_id=other.pk)
    return ids


def html_pages(ids: dict[str, int]) -> list[str]:
    """Every GET route, plus the comparison with the hostile-named reference experiment."""
    paths = [route.path for route in all_routes(ids)]
    return [*paths, f"/experiments/{ids['experiment_id']}/compare/?with={ids['other_id']}",
            f"/experiments/{ids['experiment_id']}/report.html?with={ids['other_id']}"]


@pytest.mark.django_db
def test_every_html_page_shows_hostile_text_escaped(users: Any, settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    ids = hostile_world(users)
    client = Client()
    client.force_login(users.admin)
    checked, showed = 0, 0
    for path in html_pages(ids):
        response = client.get(path)
        if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
            continue
        html = (b"".join(response.streaming_content) if response.streaming  # type: ignore[attr-defined]
                else response.content).decode()
        checked += 1
        showed += "&lt;img src=x" in html or "\\u003Cimg src=x" in html
        for marker in RAW_MARKERS:
            assert marker not in html, f"{path} contains {marker!r} unescaped"
    assert checked >= 20
    assert showed >= 10  # the hostile text is on these pages, escaped (not merely absent)


@pytest.mark.services
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_no_payload_runs_in_the_browser(asgi_server: LiveServer, users: Any, page: Any) -> None:
    ids = hostile_world(users)
    dialogs = record_dialogs(page)
    log_in(page, asgi_server, "reviewer")
    client = Client()
    client.force_login(users.reviewer)
    pages = [path for path in html_pages(ids) if not path.startswith("/admin/")
             and (response := client.get(path)).status_code == 200
             and response["Content-Type"].startswith("text/html")]
    assert len(pages) >= 10
    for path in pages:
        page.goto(asgi_server.url + path)
        page.wait_for_load_state("networkidle")
        assert page.locator(INJECTED).count() == 0, f"{path}: an injected element exists"
        assert dialogs == [], f"{path}: a dialog opened: {dialogs}"
    # The live page draws the hostile hypothesis from its snapshot, as text.
    page.goto(f"{asgi_server.url}/runs/{ids['run_id']}/")
    page.wait_for_function("window.bilevelRunPage && window.bilevelRunPage.iterations.size === 3")
    assert page.get_by_text(IMG, exact=False).count() >= 1
    assert page.locator(INJECTED).count() == 0 and dialogs == []
