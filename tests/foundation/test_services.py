"""The foundation works with real parts: a Celery worker, Channels over a socket, a browser."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from runs.models import Experiment, Run, WorkerHeartbeat
from tests.conftest import LiveServer, ServiceProcess, log_in, session_cookie_for

pytestmark = pytest.mark.services


def test_celery_worker_runs_a_task_that_writes_to_the_database(celery_worker: ServiceProcess) -> None:
    from runs.tasks import record_worker_heartbeat

    result = record_worker_heartbeat.delay("worker-under-test", ["train"])
    beat_id = result.get(timeout=60)

    beat = WorkerHeartbeat.objects.get(pk=beat_id)
    assert beat.hostname == "worker-under-test"
    assert beat.queues == ["train"]


def _make_run() -> Run:
    experiment = Experiment.objects.create(name="socket test", groups=["A"])
    return Run.objects.create(experiment=experiment, group="A", repeat=1)


async def _receive_one(url: str, headers: dict[str, str], send: Any) -> dict[str, Any]:
    async with websockets.connect(url, additional_headers=headers, open_timeout=20) as socket:
        await asyncio.get_running_loop().run_in_executor(None, send)
        return json.loads(await asyncio.wait_for(socket.recv(), timeout=20))


def test_authenticated_socket_receives_run_group_messages(asgi_server: LiveServer, users: Any) -> None:
    run = _make_run()
    cookie = session_cookie_for(users.plain)
    headers = {"Cookie": f"sessionid={cookie}", "Origin": asgi_server.url}
    event = {"type": "progress", "step": 3, "train_loss": 2.5}

    def send() -> None:
        # Only send once the consumer joined the group: the server accepted the socket after group_add.
        async_to_sync(get_channel_layer().group_send)(f"run-{run.pk}", {"type": "run.event", "event": event})

    received = asyncio.run(_receive_one(f"ws://127.0.0.1:{asgi_server.port}/ws/runs/{run.pk}/", headers, send))
    assert received == event


def test_anonymous_socket_is_refused(asgi_server: LiveServer) -> None:
    run = _make_run()

    async def connect() -> int | None:
        headers = {"Origin": asgi_server.url}
        async with websockets.connect(
            f"ws://127.0.0.1:{asgi_server.port}/ws/runs/{run.pk}/", additional_headers=headers, open_timeout=20
        ) as socket:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), timeout=20)
            return socket.close_code

    try:
        code = asyncio.run(connect())
    except websockets.InvalidStatus as refused:  # refused during the handshake
        assert refused.response.status_code == 403
    else:
        assert code == 4401


@pytest.mark.browser
def test_browser_logs_in_and_sees_the_home_page(asgi_server: LiveServer, users: Any, page: Any) -> None:
    page.goto(asgi_server.url + "/")
    assert "/accounts/login/" in page.url  # login is required

    log_in(page, asgi_server, "plain")

    assert page.locator("h1").first.inner_text() == "Experiments"
    assert page.locator(".topbar .user").inner_text().startswith("plain")
