"""The one-command launcher: embedded Redis, migrations, web server, workers; no orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.services


def descendants(pid: int) -> set[int]:
    """All processes below pid (by walking /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pids: set[int], timeout: float) -> set[int]:
    """The pids still alive after at most `timeout` seconds (empty as soon as every one is gone)."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not any(alive(p) for p in pids), timeout, "the processes to end")
    return {p for p in pids if alive(p)}


def output_until_up(process: subprocess.Popen[str]) -> str:
    """What the launcher printed until it said it is up (fails the test if it exited first)."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # blocks until the launcher reports progress
        seen.append(line)
        if "bilevel is up" in line:
            return "".join(seen)
    pytest.fail("launcher exited before it was up:\n" + "".join(seen))


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BILEVEL_TEST_SQLITE")}
    env["BILEVEL_DATA_DIR"] = str(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "launch", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert "created account: user 'admin'" in output_until_up(process)
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait()


def test_launcher_serves_the_login_page_and_sigint_stops_everything(
    launcher: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = launcher
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=20) as response:
        assert response.status == 200
        assert b"Log in to bilevel" in response.read()
    tree = descendants(process.pid)
    assert len(tree) >= 4  # redis, web, two workers (and their pool processes)

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert wait_until_gone(tree, timeout=60) == set()


def test_sigkilled_launcher_leaves_no_orphans(launcher: tuple[subprocess.Popen[str], int]) -> None:
    process, _ = launcher
    tree = descendants(process.pid)
    assert len(tree) >= 4

    process.kill()
    process.wait()
    assert wait_until_gone(tree, timeout=60) == set()
