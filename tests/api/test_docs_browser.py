"""The interactive API docs (Swagger UI, served from the django-ninja package) render in a real
browser with no network beyond our server, and the token settings page works there."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer, log_in
from tests.dashboard_runs.test_browser import expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_swagger_ui_and_token_page_in_the_browser(asgi_server: LiveServer, users: Any, page: Any) -> None:
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(asgi_server.url) else outside.append(request.url))
    log_in(page, asgi_server, "plain")
    page.goto(f"{asgi_server.url}/settings/tokens/")
    page.fill("input[name=name]", "nightly sweep")
    page.click("button:has-text('Create token')")
    expect(page.locator("#new-token")).to_contain_text("blv_")
    shot(page, "api-tokens")

    page.goto(f"{asgi_server.url}/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("bilevel API")
    expect(page.locator(".opblock-summary-path", has_text="/api/experiments/").first).to_be_visible()
    shot(page, "api-docs")
    assert outside == []  # no CDN: every asset came from this server
