"""Property-based tests of the API against its own generated OpenAPI schema (schemathesis): for a
bounded number of generated requests per operation, sent with a logged-in session and its CSRF
token, no answer is a 5xx, every status code is documented and every body matches its schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.dashboard_review.factories import make_attachment
from tests.stats.factories import make_experiment

pytestmark = pytest.mark.django_db
EXAMPLES = 6
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_schema(session: dict[str, Any]) -> Iterator[Any]:
    """In-process WSGI calls share the test's database connection and transaction; as Django's test
    client does, keep the end of each request from closing that connection (after the session
    fixture's own test-client requests, which reconnect the handler when they finish)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/openapi.json", WSGIHandler())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def session(users: Any) -> dict[str, Any]:
    """Real objects to find (ids 1, 2, ... exist) and a logged-in reviewer's cookies + CSRF token."""
    make_experiment(groups=("A", "C"), repeats=1, iterations=4)
    make_attachment()
    client = Client()
    client.force_login(users.reviewer)
    csrf = client.get("/api/session/").json()["csrf_token"]
    return {"cookies": {name: morsel.value for name, morsel in client.cookies.items()},
            "headers": {"X-CSRFToken": csrf}}


def test_api_conforms_to_its_schema(api_schema: Any, session: dict[str, Any]) -> None:
    # schemathesis' pytest plugin (schema.parametrize) does not run under pytest 9: drive its
    # Hypothesis strategies directly, one operation after another.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    operations = [op for op in operations if (op.method.upper(), op.path) != ("DELETE", "/api/session/")]  # logout
    assert len(operations) >= 20
    called: list[int] = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            response = case.call_and_validate(**session, checks=CHECKS)
            # Logged in throughout: a 401 would mean the session was not used and nothing was tested.
            assert response.status_code != 401 or case.path == "/api/session/", (case.method, case.path)
            called.append(response.status_code)

        conforms()
    assert any(200 <= code < 300 for code in called) and len(called) >= len(operations) * 3
