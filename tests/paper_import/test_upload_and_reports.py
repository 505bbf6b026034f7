"""The upload page and reports with an imported reference experiment next to ours."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from mechanisms.validation.ladder import PAPER_RUNS_DIR
from runs.models import Experiment, Run
from tests.stats.factories import make_experiment

pytestmark = pytest.mark.django_db
FIXTURES = PAPER_RUNS_DIR


def _upload(name: str, content: bytes | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content if content is not None else (FIXTURES / name).read_bytes(),
                              content_type="application/json")


def test_upload_page_requires_login(client: Client) -> None:
    response = client.get("/experiments/import-paper/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_upload_imports_and_redirects_to_the_comparison(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    response = client.post("/experiments/import-paper/",
                           {"files": [_upload("A1.json"), _upload("C1.json")], "experiment_name": "paper"})
    experiment = Experiment.objects.get(name="paper")
    assert response.status_code == 302 and response["Location"] == f"/experiments/{experiment.pk}/compare/"
    assert experiment.is_reference and experiment.runs.count() == 2
    page = client.get(response["Location"]).content.decode()
    assert "reference (read-only)" in page and "Imported 2 run(s) (A1, C1)" in page


def test_malformed_upload_is_400_and_imports_nothing(client: Client, users: Any) -> None:
    client.force_login(users.plain)
    response = client.post("/experiments/import-paper/",
                           {"files": [_upload("A1.json"), _upload("bad.json", b'{"group": "A"')]})
    assert response.status_code == 400
    assert "Nothing was imported: bad.json: not valid JSON" in response.content.decode()
    assert Run.objects.count() == 0 and Experiment.objects.count() == 0
    assert client.post("/experiments/import-paper/", {}).status_code == 400


def test_comparing_our_experiment_with_the_reference(client: Client, users: Any) -> None:
    ours = make_experiment(groups=("A", "C"), iterations=30)
    client.force_login(users.plain)
    client.post("/experiments/import-paper/", {"files": [_upload("A1.json"), _upload("C1.json")]})
    reference = Experiment.objects.get(is_reference=True)
    data = client.get(f"/experiments/{ours.pk}/summary.json?with={reference.pk}").json()
    keys = [g["key"] for g in data["groups"]]
    assert keys == ["A", "C", f"A@{reference.pk}", f"C@{reference.pk}"]
    paper_c = next(g for g in data["groups"] if g["key"] == f"C@{reference.pk}")
    assert paper_c["delta"]["mean"] == pytest.approx(1.047687 - 1.113135)
    assert any("Reference (paper) runs" in note for note in data["notes"])
    html = client.get(f"/experiments/{ours.pk}/compare/?with={reference.pk}").content.decode()
    assert "(reference)" in html
    report = client.get(f"/experiments/{ours.pk}/report.html?with={reference.pk}")
    body = report.content.decode()
    assert report.status_code == 200 and "stroke-dasharray" in body  # reference runs drawn dashed
    assert "<script" not in body and "src=" not in body and "href=\"http" not in body  # self-contained
