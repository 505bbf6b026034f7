"""The check every test module ends with (tests/conftest.py, nothing_outlives_the_module): what a module
started and left running, or left connected to the test database, is named and then killed, so that one
stuck test cannot break the modules after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import child_env, clean_up_after, descendants_of

pytestmark = pytest.mark.django_db(transaction=True)
HOLD = "import time; print('ready', flush=True); time.sleep(300)"
HOLD_A_SESSION = ("import os, time, psycopg; c = psycopg.connect(os.environ['DATABASE_URL']); c.execute('SELECT 1'); "
                  "print('ready', flush=True); time.sleep(300)")


def _start(code: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"  # blocks until it is up
    return child


def test_a_process_left_running_is_named_and_killed() -> None:
    before = descendants_of(os.getpid())
    child = _start(HOLD)
    try:
        report = clean_up_after(before, grace=0.5)
        assert report == [f"process {child.pid} still running: {sys.executable} -c {HOLD}"]
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_session_left_on_the_test_database_is_named_and_ended() -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("the session check reads PostgreSQL's pg_stat_activity")
    before = descendants_of(os.getpid())
    child = _start(HOLD_A_SESSION)
    try:
        report = clean_up_after(before, grace=0.5)
        assert f"process {child.pid} still running" in report[0]
        assert len(report) == 2 and report[1].startswith("database session ") and "SELECT 1" in report[1]
        assert clean_up_after(before, grace=10) == []  # the session was ended with the process
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_nothing_left_means_nothing_reported() -> None:
    before = descendants_of(os.getpid())
    child = _start(HOLD)
    child.terminate()
    child.wait()
    assert clean_up_after(before, grace=5) == []
