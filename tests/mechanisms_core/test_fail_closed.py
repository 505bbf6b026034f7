"""Fail closed: where kernel isolation cannot be set up, no generated code is loaded, and the
ladder, the runtime, the pages and the API say why in a sentence a user can act on."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mechanisms.runtime import MechanismRuntime
from mechanisms.sandbox import host as sandbox
from mechanisms.sandbox import isolation
from mechanisms.sandbox.host import HostError, MechanismHost, isolation_status
from mechanisms.validation.ladder import recorded_fixtures, validate_mechanism
from tests.conftest import PASSWORD, Users
from tests.mechanisms_core.helpers import fixated_trace, source, state_for

MARKER_NAME = "bilevel-generated-code-ran"
# Would leave a marker in the working directory if it ever ran anywhere.
WITNESS = f"""
import operator
import random


class Mechanism:
    def __init__(self):
        operator.attrgetter("_" + "os")(random).open({MARKER_NAME!r}, 0o101)

    def propose(self, state):
        return {{"changes": {{"MATRIX_LR": 0.05}}, "hypothesis": "ran"}}
"""
SPEC = {"name": "witness", "class_name": "Mechanism", "hooks": ["propose"], "rationale": "r",
        "state_kept": "s", "expected_effect": "e"}


@pytest.fixture(params=["bubblewrap missing", "user namespaces disabled"])
def no_isolation(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.chdir(tmp_path)
    if request.param == "bubblewrap missing":
        monkeypatch.setattr(isolation.shutil, "which", lambda name: None if name == "bwrap" else "/usr/bin/" + name)
        expected = "bubblewrap is not installed"
    else:
        # What bubblewrap prints where the kernel refuses unprivileged user namespaces. A root parent
        # starts bubblewrap as the unprivileged host user, so the fake lies where that user can run it.
        readable = Path(tempfile.mkdtemp(prefix="bilevel-fake-bwrap-"))
        request.addfinalizer(lambda: shutil.rmtree(readable, ignore_errors=True))
        readable.chmod(0o755)
        fake = readable / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setattr(isolation.shutil, "which",
                            lambda name: str(fake) if name == "bwrap" else "/usr/bin/" + name)
        expected = "User namespaces seem to be disabled"
    monkeypatch.setattr(sandbox, "_status", None)
    yield expected
    monkeypatch.setattr(sandbox, "_status", None)


def test_the_host_refuses_to_start(no_isolation: str) -> None:
    with pytest.raises(HostError) as raised:
        MechanismHost()
    assert raised.value.kind == "isolation" and no_isolation in str(raised.value)
    status = isolation_status(refresh=True)
    assert not status.available and no_isolation in status.reason


def test_the_ladder_stops_at_the_import_rung(no_isolation: str) -> None:
    report = validate_mechanism(SPEC, WITNESS, recorded_fixtures()[:1])
    failed = report.failed_step
    assert failed is not None and failed["step"] == "import" and no_isolation in failed["detail"]
    assert not Path(MARKER_NAME).exists()


def test_the_runtime_deactivates_with_the_reason(no_isolation: str) -> None:
    trace = fixated_trace()
    with MechanismRuntime.start([source(WITNESS, "witness")], trace, state_for(trace)) as runtime:
        assert runtime.active == []
        assert no_isolation in runtime.deactivated[0]["reason"]
        assert runtime.propose(state_for(trace)) == (None, None)
    assert not Path(MARKER_NAME).exists()


@pytest.mark.django_db
def test_pages_and_api_say_why(no_isolation: str, client: Any, users: Users) -> None:
    client.login(username=users.plain.username, password=PASSWORD)
    page = client.get("/").content.decode()
    assert "Level 2 is off on this machine" in page and no_isolation in page
    api = json.loads(client.get("/api/").content)
    assert api["level2_isolation"]["available"] is False and no_isolation in api["level2_isolation"]["reason"]


@pytest.mark.django_db
def test_pages_are_quiet_when_isolation_works(client: Any, users: Users, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_status", None)
    client.login(username=users.plain.username, password=PASSWORD)
    assert "Level 2 is off" not in client.get("/").content.decode()
    assert json.loads(client.get("/api/").content)["level2_isolation"] == {"available": True, "reason": ""}
