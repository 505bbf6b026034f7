"""Where credit is seen: the run page's waterfall and replays, the library (mean, t interval, n, flag), the
review page of a new proposal (its kind's earlier credit), the comparison and the JSON API. Runs and replays
are built directly in the database with known values, so every number can be checked by hand."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from scipy import stats as scipy_stats

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment
from runs.models import Experiment, Iteration, Run, RunKind, RunStatus

pytestmark = pytest.mark.django_db

ACTIVE_FROM = 3


def mechanism(name: str) -> Mechanism:
    code = f"class M:\n    NAME = {name!r}\n"
    return Mechanism.objects.create(code_hash=hashlib.sha256(code.encode()).hexdigest(), name=name, code=code,
                                    origin="builtin-catalogue", passed_ladder=True, spec={"class_name": "M"})


def finished_run(experiment: Experiment, repeat: int, best: float, baseline: float = 3.0) -> Run:
    run = Run.objects.create(experiment=experiment, group="D", repeat=repeat, seed=repeat, level_research=True,
                             status=RunStatus.COMPLETED, baseline_val_bpb=baseline, best_val_bpb=best,
                             proposals_done=5, finished_at=timezone.now())
    Iteration.objects.create(run=run, index=0, kind="baseline", status="baseline", val_bpb=baseline,
                             config={"DEPTH": 4})
    for index in range(1, 6):
        Iteration.objects.create(run=run, index=index, status="keep" if index == 5 else "discard",
                                 val_bpb=best if index == 5 else baseline + 0.1, config={"DEPTH": 4, "i": index})
    return run


def attach(run: Run, used: Mechanism) -> MechanismAttachment:
    return MechanismAttachment.objects.create(run=run, mechanism=used, status=AttachmentStatus.RETIRED,
                                              activated_at_iteration=ACTIVE_FROM, activated_at=timezone.now())


def replay(source: Run, removed: list[MechanismAttachment], best: float, diverge_at: int | None = None) -> Run:
    made = Run.all_objects.create(
        experiment=source.experiment, group=source.group, repeat=source.repeat, seed=source.seed,
        kind=RunKind.REPLAY, replay_of=source, replay_from_iteration=ACTIVE_FROM, status=RunStatus.COMPLETED,
        replay_removed=[{"attachment": a.pk, "mechanism": a.mechanism_id, "name": a.mechanism.name} for a in removed],
        baseline_val_bpb=source.baseline_val_bpb, best_val_bpb=best)
    for it in source.iteration_set.order_by("index"):
        changed = diverge_at is not None and it.index >= diverge_at
        Iteration.objects.create(run=made, index=it.index, kind=it.kind, status=it.status, val_bpb=it.val_bpb,
                                 config={**it.config, "replayed": True} if changed else it.config)
    return made


@pytest.fixture
def two_mechanism_run() -> tuple[Run, dict[str, float]]:
    experiment = Experiment.objects.create(name="credit", groups=["D"], objective="surrogate")
    run = finished_run(experiment, 1, best=2.80)
    tabu, bandit = attach(run, mechanism("tabu")), attach(run, mechanism("parameter_bandit"))
    replay(run, [tabu], best=2.85, diverge_at=4)  # credit +0.05: tabu helped
    replay(run, [bandit], best=2.78, diverge_at=3)  # credit −0.02: the bandit hurt
    replay(run, [tabu, bandit], best=2.90, diverge_at=3)  # without both: +0.10
    return run, {"tabu": 0.05, "parameter_bandit": -0.02, "both": 0.10}


def test_the_run_page_shows_the_waterfall_with_without_each_and_without_both(
        client: Client, users: Any, two_mechanism_run: tuple[Run, dict[str, float]]) -> None:
    run, expected = two_mechanism_run
    client.force_login(users.plain)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="credit-waterfall"' in page
    assert 'data-label="Level 1 alone"' in page and 'data-label="tabu" data-value="0.050000"' in page
    assert 'data-label="parameter_bandit" data-value="-0.020000"' in page
    # Credits do not add up: without both (+0.10) − (0.05 − 0.02) = +0.07 is the interaction.
    assert 'data-kind="interaction"' in page and 'data-value="0.070000"' in page
    assert "diverges at #4" in page and "diverges at #3" in page
    assert page.count('data-replay="') == 3

    data = client.get(f"/api/runs/{run.pk}/credit/").json()
    credits = {m["name"]: m["credit"] for m in data["mechanisms"]}
    assert credits["tabu"] == pytest.approx(expected["tabu"])
    assert credits["parameter_bandit"] == pytest.approx(expected["parameter_bandit"])
    assert data["without_all"]["credit"] == pytest.approx(expected["both"])
    assert data["level1_alone"] == pytest.approx(2.90) and data["interaction"] == pytest.approx(0.07)
    replay_id = data["without_all"]["replay"]
    replay_page = client.get(f"/runs/{replay_id}/").content.decode()
    assert 'id="replay-banner"' in replay_page and f"/runs/{run.pk}/" in replay_page
    detail = client.get(f"/api/runs/{replay_id}/").json()
    assert detail["kind"] == "replay" and detail["replay_of"] == run.pk


def test_the_library_shows_mean_credit_with_its_t_interval_and_flags_a_mechanism_that_never_helped(
        client: Client, users: Any) -> None:
    experiment = Experiment.objects.create(name="library", groups=["D"], objective="surrogate")
    useless, useful = mechanism("useless"), mechanism("useful")
    useless_credits = [-0.01, 0.0, -0.02, 0.005, -0.003]
    useful_credits = [0.03, 0.05, 0.01, 0.04]
    repeat = 0
    for used, credits in ((useless, useless_credits), (useful, useful_credits)):
        for credit in credits:
            repeat += 1
            run = finished_run(experiment, repeat, best=2.8)
            replay(run, [attach(run, used)], best=2.8 + credit, diverge_at=4)
    client.force_login(users.plain)
    page = client.get("/mechanisms/library/").content.decode()

    mean = sum(useful_credits) / 4
    low, high = scipy_stats.t.interval(0.95, 3, loc=mean, scale=scipy_stats.sem(useful_credits))
    row = page.split(f'data-mechanism="{useful.pk}"')[1].split("</tr>")[0]
    assert f"{mean:.5f} [{low:.5f}, {high:.5f}] (n=4)" in row and 'data-flag="credit"' not in row
    flagged = page.split(f'data-mechanism="{useless.pk}"')[1].split("</tr>")[0]
    assert "(n=5)" in flagged and 'data-flag="credit"' in flagged and "credit ≤ 0 over 5 runs" in flagged

    api = {r["name"]: r for r in client.get("/api/mechanism-credit/").json()["results"]}
    assert api["useless"]["flagged"] is True and api["useless"]["credit"]["n"] == 5
    assert api["useful"]["credit"]["ci_low"] == pytest.approx(low)


def test_the_review_page_of_a_new_proposal_shows_the_credit_its_kind_earned_before(
        client: Client, users: Any, two_mechanism_run: tuple[Run, dict[str, float]]) -> None:
    run, _ = two_mechanism_run
    new_run = Run.objects.create(experiment=run.experiment, group="D", repeat=9, level_research=True)
    tabu = Mechanism.objects.get(name="tabu")
    pending = MechanismAttachment.objects.create(run=new_run, mechanism=tabu, status=AttachmentStatus.PENDING)
    client.force_login(users.reviewer)
    page = client.get(f"/mechanisms/{pending.pk}/").content.decode()
    note = page.split('id="kind-credit"')[1].split("</p>")[0]
    assert "<strong>tabu</strong>" in note and "<strong>0.05000</strong>" in note and "over 1 run " in note


def test_on_the_real_trainer_replays_are_offered_with_their_cost_and_the_button_only_queues_a_task(
        client: Client, users: Any, redis_client: Any) -> None:
    experiment = Experiment.objects.create(name="real", groups=["D"], objective="trainer", iterations=5,
                                           created_by=users.plain, confirmation_repeats=2)
    run = finished_run(experiment, 1, best=2.8)
    Iteration.objects.filter(run=run, index__gt=0).update(training_seconds=50.0)
    attach(run, mechanism("tabu"))  # active from iteration 3: proposals 3, 4, 5 and 2 confirmations
    client.force_login(users.plain)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="replay-offer"' in page and "5 trainings × about 50 s" in page

    response = client.post(f"/runs/{run.pk}/replays/")
    assert response.status_code == 302
    assert not Run.all_objects.filter(replay_of=run).exists()  # the view made nothing itself
    queued = [m for m in redis_client.lrange("default", 0, -1) if b"runs.tasks.offer_replays" in m]
    assert len(queued) == 1

    from runs.engine.replay import offer_replays  # what the task does, here in-process
    [made] = offer_replays(run.pk)
    replay = Run.all_objects.get(pk=made)
    assert replay.kind == RunKind.REPLAY and replay.status == RunStatus.QUEUED and replay.replay_from_iteration == 3
    assert list(replay.iteration_set.values_list("index", flat=True)) == [0, 1, 2]  # the run's own, copied
    assert 'id="replay-offer"' not in client.get(f"/runs/{run.pk}/").content.decode()


def test_replays_are_offered_only_to_those_who_control_the_run(client: Client, users: Any, redis_client: Any) -> None:
    experiment = Experiment.objects.create(name="real", groups=["D"], objective="trainer", created_by=users.admin)
    run = finished_run(experiment, 1, best=2.8)
    attach(run, mechanism("tabu"))
    client.force_login(users.plain)
    assert client.post(f"/runs/{run.pk}/replays/").status_code == 403
    refused = client.post(f"/api/runs/{run.pk}/replays/")
    assert refused.status_code == 403 and "creator or staff" in refused.json()["error"]
    assert not [m for m in redis_client.lrange("default", 0, -1) if b"offer_replays" in m]


def test_the_comparison_page_and_its_exports_show_credit_per_group(
        client: Client, users: Any, two_mechanism_run: tuple[Run, dict[str, float]]) -> None:
    run, expected = two_mechanism_run
    client.force_login(users.plain)
    summary = client.get(f"/experiments/{run.experiment_id}/summary.json").json()
    [group] = summary["groups"]
    assert group["credit"]["all_mechanisms"]["credit"]["mean"] == pytest.approx(expected["both"])
    assert group["credit"]["all_mechanisms"]["credit"]["n"] == 1
    assert group["credit"]["by_kind"]["tabu"]["credit"]["mean"] == pytest.approx(expected["tabu"])
    [row] = summary["runs"]
    assert row["mechanism_credit"] == pytest.approx(expected["both"])
    csv_text = client.get(f"/experiments/{run.experiment_id}/summary.csv").content.decode()
    [csv_row] = list(csv.DictReader(io.StringIO(csv_text)))
    assert float(csv_row["mechanism_credit"]) == pytest.approx(expected["both"])
    page = client.get(f"/experiments/{run.experiment_id}/compare/").content.decode()
    table = page.split('id="credit-table"')[1].split("</table>")[0]
    assert "+0.10000 (n=1)" in table and "tabu: +0.05000 (n=1)" in table and "parameter_bandit: -0.02000" in table
    report = client.get(f"/experiments/{run.experiment_id}/report.html").content.decode()
    assert 'id="credit-table"' in report


def test_a_failed_replay_is_said_and_made_again_when_offered(
        client: Client, users: Any, two_mechanism_run: tuple[Run, dict[str, float]], redis_client: Any) -> None:
    run, _ = two_mechanism_run
    Experiment.objects.filter(pk=run.experiment_id).update(created_by=users.plain)
    failed = Run.all_objects.filter(replay_of=run).order_by("pk").first()
    assert failed is not None
    Run.all_objects.filter(pk=failed.pk).update(status=RunStatus.FAILED, status_detail="step failed: boom")
    client.force_login(users.plain)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="credit-waterfall"' not in page and 'id="replays-failed"' in page and f"/runs/{failed.pk}/" in page
    assert "Make the missing replays again" in page
    assert client.post(f"/runs/{run.pk}/replays/").status_code == 302

    from runs.engine.replay import offer_replays

    [again] = offer_replays(run.pk)  # only the failed one is made again
    remade = Run.all_objects.get(pk=again)
    assert remade.replay_removed == failed.replay_removed
    Run.all_objects.filter(pk=again).update(status=RunStatus.COMPLETED, best_val_bpb=2.85)
    assert 'id="credit-waterfall"' in client.get(f"/runs/{run.pk}/").content.decode()
    assert Run.all_objects.filter(pk=failed.pk).exists()  # the failed one stays on record
