"""Every answer under /api/ is JSON with an "error", whatever went wrong: an odd path, a method the route does
not take, a body that cannot be parsed (before authentication is even looked at)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def assert_json_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response.content[:300]
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    return body


# %0A: the test client drops a raw newline from a URL (as urllib does); encoded, it reaches the resolver.
@pytest.mark.parametrize("path", ["/api/nothing-here/", "/api/runs/x/", "/api/runs/1/%0A", "/api/a%0Ab/",
                                  "/api/%0A", "/api/runs/1/%00/", "/api/" + "x" * 3000])
def test_an_unknown_path_is_a_json_404(client: Client, path: str) -> None:
    assert_json_error(client.get(path), 404)


@pytest.mark.parametrize(("method", "path"), [("delete", "/api/experiments/"), ("put", "/api/runs/"),
                                              ("patch", "/api/session/"), ("delete", "/api/")])
def test_a_method_the_route_does_not_take_is_a_json_405_with_allow(client: Client, method: str, path: str) -> None:
    response = getattr(client, method)(path)
    assert_json_error(response, 405)
    assert response["Allow"]


BROKEN_MULTIPART = [
    (b"x", "multipart/form-data"),  # no boundary
    (b"x", "multipart/form-data; boundary=" + "b" * 300),  # longer than Django accepts
]


@pytest.mark.parametrize(("body", "content_type"), BROKEN_MULTIPART)
def test_a_broken_multipart_body_is_a_json_400_for_a_logged_in_caller(users: Any, body: bytes,
                                                                      content_type: str) -> None:
    """The session's CSRF check reads the form body before authentication is decided: Django's parse error
    there used to be an HTML page."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(users.plain)
    client.get("/api/session/")  # the csrftoken cookie, but no header: the check reads the form body
    for path in ("/api/experiments/", "/api/paper-import/", "/api/session/"):
        body_json = assert_json_error(client.generic("POST", path, body, content_type=content_type), 400)
        assert "could not be read" in body_json["error"]


@pytest.mark.parametrize(("body", "content_type"), BROKEN_MULTIPART)
def test_a_broken_multipart_body_from_anyone_is_answered_in_json(client: Client, body: bytes,
                                                                 content_type: str) -> None:
    assert_json_error(client.generic("POST", "/api/experiments/", body, content_type=content_type), 401)
    assert_json_error(client.generic("POST", "/api/session/", body, content_type=content_type), 400)
