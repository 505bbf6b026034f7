"""Archive, delete, and a run's tags and notes: who may, what it does, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from runs.models import Experiment, Iteration, Run

from .conftest import make_experiment, make_iteration, make_run

pytestmark = pytest.mark.django_db


def test_archive_hides_from_the_list_and_unarchive_brings_it_back(client: Client, users: Any) -> None:
    experiment = make_experiment(users.plain, name="old sweep")
    make_experiment(users.plain, name="current sweep")
    client.force_login(users.plain)
    client.post(f"/experiments/{experiment.pk}/archive/")
    listing = client.get("/").content.decode()
    assert "current sweep</a>" in listing and "old sweep</a>" not in listing
    assert "old sweep</a>" in client.get("/?archived=1").content.decode()
    assert "Archived" in client.get(f"/experiments/{experiment.pk}/").content.decode()
    client.post(f"/experiments/{experiment.pk}/archive/")
    assert "old sweep</a>" in client.get("/").content.decode()


def test_delete_needs_the_name_and_no_active_run(client: Client, users: Any) -> None:
    experiment = make_experiment(users.plain, name="doomed")
    run = make_run(experiment, "A", status="running")
    make_iteration(run, 0)
    client.force_login(users.plain)
    client.post(f"/experiments/{experiment.pk}/delete/", {"confirm": "doomed"})
    assert Experiment.objects.filter(pk=experiment.pk).exists()  # a run is still running
    Run.objects.filter(pk=run.pk).update(status="cancelled")
    client.post(f"/experiments/{experiment.pk}/delete/", {"confirm": "wrong"})
    assert Experiment.objects.filter(pk=experiment.pk).exists()
    response = client.post(f"/experiments/{experiment.pk}/delete/", {"confirm": "doomed"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Experiment.objects.filter(pk=experiment.pk).exists() and not Iteration.objects.exists()


def test_tags_and_notes_on_a_run(client: Client, users: Any) -> None:
    experiment = make_experiment(users.plain, name="notes")
    run = make_run(experiment, "A", status="completed")
    client.force_login(users.plain)
    client.post(f"/runs/{run.pk}/annotate/", {"tags": "lr sweep, promising,, promising, " + "x" * 80,
                                                "notes": "diverged at <b>step</b> 40"})
    run.refresh_from_db()
    assert run.tags == ["lr sweep", "promising", "x" * 40] and run.notes == "diverged at <b>step</b> 40"
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "diverged at &lt;b&gt;step&lt;/b&gt; 40" in page and 'class="tag run-tag">promising<' in page
    assert client.get(f"/api/runs/{run.pk}/").json()["tags"] == ["lr sweep", "promising", "x" * 40]


def test_others_may_not_archive_delete_or_annotate(client: Client, users: Any) -> None:
    experiment = make_experiment(users.reviewer, name="not yours")
    run = make_run(experiment, "A", status="completed")
    client.force_login(users.plain)
    assert client.post(f"/experiments/{experiment.pk}/archive/").status_code == 403
    assert client.post(f"/experiments/{experiment.pk}/delete/", {"confirm": "not yours"}).status_code == 403
    assert client.post(f"/runs/{run.pk}/annotate/", {"notes": "mine now"}).status_code == 403
    experiment.refresh_from_db()
    run.refresh_from_db()
    assert experiment.archived_at is None and run.notes == ""
    assert "Archive or delete" not in client.get(f"/experiments/{experiment.pk}/").content.decode()
