"""The launcher's supervisor with real child processes (small shell scripts, so it takes seconds).

A child that dies is restarted with backoff and reported once, with its signal and the last
lines of *its own* log (not a previous instance's); one that keeps crashing is given up on,
by name; the status file the pages read says what is recovering while it is.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from runs.ops import supervisor
from runs.ops.process_tools import kill_process_group
from runs.ops.supervisor import Child, GiveUp, Supervisor
from tests.polling import wait_until

# Suicide by SIGKILL after a line of output: what `kill -9` or the OOM killer looks like.
CRASHY = ["sh", "-c", 'echo "instance $$ working"; kill -9 $$']
STEADY = ["sh", "-c", 'echo "steady $$ up"; exec sleep 60']


def make(tmp_path: Path) -> tuple[Supervisor, list[str]]:
    messages: list[str] = []
    sup = Supervisor({"PATH": "/usr/bin:/bin"}, tmp_path, tmp_path, tmp_path / "status.json",
                     say=messages.append, warn=messages.append)
    return sup, messages


def tick_until(sup: Supervisor, condition: Any, timeout: float = 20) -> None:
    """Tick the supervisor at the launcher's poll interval until `condition` holds."""

    def ticked() -> bool:
        if condition():
            return True
        sup.tick()
        return False

    wait_until(ticked, timeout, "the supervisor to get there", interval=0.02)


def test_a_dead_child_is_restarted_and_reported_with_its_own_signal_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_SECONDS", 0.05)
    (tmp_path / "crashy.log").write_text("a line of the previous launch\n")
    sup, messages = make(tmp_path)
    steady = Child("steady", STEADY, ready_marker="up")
    crashy = Child("crashy", CRASHY)
    sup.start(steady)
    sup.start(crashy)
    first_pid = crashy.process.pid if crashy.process else 0
    try:
        tick_until(sup, lambda: any("was killed" in m for m in messages))
        report = next(m for m in messages if "was killed" in m)
        assert report.startswith(f"crashy (pid {first_pid}) was killed by SIGKILL (signal 9)")
        assert f"instance {first_pid} working" in report
        assert "previous launch" not in report
        assert json.loads((tmp_path / "status.json").read_text())["recovering"] == [
            {"part": "crashy", "cause": "was killed by SIGKILL (signal 9)"}
        ]
        tick_until(sup, lambda: crashy.restarts >= 1)
        assert crashy.process is not None and crashy.process.pid != first_pid

        with pytest.raises(GiveUp) as gave_up:
            tick_until(sup, lambda: False)
        assert str(gave_up.value).startswith("crashy (pid ")
        assert f"crashed {supervisor.MAX_CRASHES} times" in str(gave_up.value)
        assert crashy.restarts == supervisor.MAX_CRASHES - 1
        assert steady.process is not None and steady.process.poll() is None, "the others kept running"
        assert sum("was killed" in m for m in messages) == supervisor.MAX_CRASHES - 1, "each death reported once"
    finally:
        sup.stop_all(lambda process, sig: kill_process_group(process, sig, grace_seconds=5))
    assert not (tmp_path / "status.json").exists()


def test_a_child_that_needs_redis_waits_for_it_and_the_status_clears_when_all_are_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_SECONDS", 0.05)
    sup, messages = make(tmp_path)
    redis = Child("redis", STEADY, ready_marker="up")
    worker = Child("worker", STEADY, needs_redis=True, ready_marker="up")
    for child in (redis, worker):
        sup.start(child)
    try:
        tick_until(sup, lambda: redis.ready and worker.ready)
        for child in (redis, worker):
            assert child.process is not None
            child.process.send_signal(signal.SIGKILL)
            child.process.wait()
        sup.tick()
        recovering = json.loads((tmp_path / "status.json").read_text())["recovering"]
        assert [part["part"] for part in recovering] == ["redis", "worker"]
        tick_until(sup, lambda: worker.restarts == 1)
        assert redis.ready, "the worker was restarted before Redis was back"
        tick_until(sup, lambda: worker.ready)
        sup.tick()
        assert not (tmp_path / "status.json").exists()
        assert any(m.startswith("worker is back") for m in messages)
    finally:
        sup.stop_all(lambda process, sig: kill_process_group(process, sig, grace_seconds=5))
