"""Redis dies and comes back mid-run (no persistence: every queued task and channel group is lost).

A private redis-server is killed and restarted on the same port while a surrogate run is being
stepped by a real Celery worker and watched in Chromium through the real ASGI server. The worker
reconnects, the lost step is re-enqueued by the reaper, nothing stored in the database is lost or
doubled, and the page reconnects its socket and catches up from the snapshot.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from runs.models import Iteration, Run, RunStatus
from tests.conftest import ServiceProcess, log_in
from tests.engine.helpers import make_experiment
from tests.polling import wait_until

from .conftest import PrivateRedis, env_with, manage, record_dialogs, start_asgi, start_worker

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ITERATIONS = 30
# The beat's reaper (runs.tasks.reap_expired_leases, every 20 s), run once a second with the
# lost-task grace shortened from 30 s to 1 s so the test takes seconds; the code path is the same.
REAPER = """
import time, django
django.setup()
import runs.tasks as tasks
from django.conf import settings
from runs.models import Run
settings.LOST_TASK_GRACE_SECONDS = 1
deadline = time.monotonic() + 180
while time.monotonic() < deadline and not Run.objects.get(pk={run_id}).is_finished:
    revived = tasks.reap_expired_leases()
    if revived:
        print("revived", revived, flush=True)
    time.sleep(1)
"""


def rows(run: Run) -> dict[int, tuple[Any, ...]]:
    return {
        i.index: (i.pk, i.status, i.val_bpb, i.config)
        for i in Iteration.objects.filter(run=run).order_by("index")
    }


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_redis_restart_mid_run_loses_nothing_and_the_page_catches_up(
    private_redis: PrivateRedis, users: Any, page: Any
) -> None:
    experiment = make_experiment(name="redis restart", iterations=ITERATIONS, strategy_interval=ITERATIONS,
                                 created_by=users.plain)
    run = experiment.runs.get()
    env = env_with(private_redis.url, DJANGO_SETTINGS_MODULE="bilevel_site.settings")
    services: list[ServiceProcess] = []
    dialogs = record_dialogs(page)
    try:
        worker = start_worker(env, "redis-restart")
        services.append(worker)
        server = start_asgi(env)
        services.append(server.process)
        log_in(page, server, "plain")
        page.goto(f"{server.url}/runs/{run.pk}/")
        expect(page.locator("#live-indicator")).to_have_text("live")

        started = manage(env, "start_run", str(run.pk))
        assert started.returncode == 0, started.stderr
        wait_until(lambda: Iteration.objects.filter(run=run).count() >= 4, 60, "the run to be under way")

        private_redis.kill()
        expect(page.locator("#live-indicator")).to_have_text("reconnecting…", timeout=20_000)
        before_restart = rows(run)
        private_redis.start()

        reaper = ServiceProcess("reaper", [sys.executable, "-c", REAPER.format(run_id=run.pk)], env)
        services.append(reaper)
        wait_until(lambda: Run.objects.get(pk=run.pk).is_finished, 180, "the run to finish after the restart")

        run.refresh_from_db()
        assert run.status == RunStatus.COMPLETED, run.status_detail
        after = rows(run)
        assert sorted(after) == list(range(ITERATIONS + 1)), "no iteration lost or recorded twice"
        for index, row in before_restart.items():
            assert after[index] == row, f"iteration {index} changed across the restart"
        assert run.proposals_done == ITERATIONS

        # The page: socket back, snapshot fetched, every iteration drawn, the status final.
        expect(page.locator("#live-indicator")).to_have_text("live", timeout=30_000)
        expect(page.locator("#run-status")).to_have_text("Completed")
        page.wait_for_function(f"window.bilevelRunPage.iterations.size === {ITERATIONS + 1}")
        assert dialogs == []
        print(f"\nreaper: {reaper.output().strip() or 'revived nothing'}")
    finally:
        for service in reversed(services):
            service.stop()
