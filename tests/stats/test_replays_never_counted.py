"""Replays are recorded like runs but never counted as runs: not in the comparison page, the Table-2
summary, the exports, the experiment pages or the API's lists, whatever their values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from runs.models import Iteration, LLMCall, Run, RunKind, RunStatus
from tests.stats.factories import make_experiment

pytestmark = pytest.mark.django_db

SENTINEL = 0.4242421  # a val_bpb no real run of the factory has (they are near 2.66)


def add_replays(experiment_id: int) -> list[Run]:
    """A finished replay of every run, with a best far better than any run's, its own iterations and LLM calls."""
    replays = []
    for source in Run.objects.filter(experiment_id=experiment_id):
        replay = Run.all_objects.create(
            experiment_id=experiment_id, group=source.group, repeat=source.repeat, seed=source.seed,
            kind=RunKind.REPLAY, replay_of=source, replay_from_iteration=3, status=RunStatus.COMPLETED,
            baseline_val_bpb=SENTINEL, best_val_bpb=SENTINEL, best_iteration=1, proposals_done=10)
        Iteration.objects.create(run=replay, index=0, kind="baseline", status="baseline", val_bpb=SENTINEL)
        for index in range(1, 11):
            Iteration.objects.create(run=replay, index=index, status="keep", val_bpb=SENTINEL - index * 1e-3,
                                     changes={"DEPTH": {"old": 1, "new": 2}}, best_before=SENTINEL)
        LLMCall.objects.create(run=replay, level="1", purpose="propose", backend="llm", model="m", prompt="p",
                               reply="r", tokens_in=10_000_000, tokens_out=1, latency_seconds=999.0)
        replays.append(replay)
    return replays


def without_credit(value: Any) -> Any:
    """The summary without the credit fields (credit is where replays are meant to show)."""
    if isinstance(value, dict):
        return {k: without_credit(v) for k, v in value.items() if "credit" not in k}
    if isinstance(value, list):
        return [without_credit(v) for v in value]
    return value


def fetch_everything(client: Client, experiment_id: int) -> dict[str, Any]:
    pages = {
        "summary.json": json.loads(client.get(f"/experiments/{experiment_id}/summary.json").content),
        "summary.csv": client.get(f"/experiments/{experiment_id}/summary.csv").content.decode(),
        "compare": client.get(f"/experiments/{experiment_id}/compare/").content.decode(),
        "report": client.get(f"/experiments/{experiment_id}/report.html").content.decode(),
        "detail": client.get(f"/experiments/{experiment_id}/").content.decode(),
        "home": client.get("/").content.decode(),
        "iterations.csv": b"".join(
            client.get(f"/experiments/{experiment_id}/iterations/?format=csv").streaming_content  # type: ignore[attr-defined]
        ).decode(),
        "api_runs": client.get(f"/api/runs/?experiment={experiment_id}&page_size=200").json(),
        "api_all_runs": client.get("/api/runs/?page_size=200").json(),
        "api_experiment": client.get(f"/api/experiments/{experiment_id}/").json(),
        "api_iterations": client.get(f"/api/iterations/?experiment={experiment_id}&page_size=500").json(),
        "api_all_iterations": client.get("/api/iterations/?page_size=500").json(),
        "api_comparison": client.get(f"/api/experiments/{experiment_id}/comparison/").json(),
    }
    return pages


def test_replays_never_enter_group_statistics_lists_or_exports(client: Client, users: Any) -> None:
    experiment = make_experiment(groups=("A", "D"), repeats=3, llm_calls=True)
    client.force_login(users.plain)
    before = fetch_everything(client, experiment.pk)

    replays = add_replays(experiment.pk)
    after = fetch_everything(client, experiment.pk)

    assert without_credit(after["summary.json"]) == without_credit(before["summary.json"])
    assert [g["n_runs"] for g in after["summary.json"]["groups"]] == [3, 3]
    assert after["api_runs"]["count"] == before["api_runs"]["count"] == 6
    assert after["api_all_runs"]["count"] == 6
    assert len(after["api_experiment"]["runs"]) == 6
    assert after["api_iterations"]["count"] == before["api_iterations"]["count"]
    assert after["api_all_iterations"]["count"] == before["api_all_iterations"]["count"]
    assert after["iterations.csv"] == before["iterations.csv"]
    assert without_credit(after["api_comparison"]) == without_credit(before["api_comparison"])
    for name in ("summary.csv", "compare", "report", "detail", "home"):
        assert "0.42424" not in after[name], name
        assert "10000000" not in after[name].replace(",", ""), name
    replay_ids = {r.pk for r in replays}
    for name in ("detail", "compare", "report", "home"):
        assert all(f'/runs/{pk}/"' not in after[name] for pk in replay_ids), name
    listed = {r["id"] for r in after["api_runs"]["results"]} | {r["id"] for r in after["api_all_runs"]["results"]}
    assert len(listed) == 6 and not listed & replay_ids
    # A replay is still there to be seen when asked for by id.
    assert client.get(f"/runs/{replays[0].pk}/").status_code == 200
    assert client.get(f"/api/iterations/?run={replays[0].pk}").json()["count"] == 11
