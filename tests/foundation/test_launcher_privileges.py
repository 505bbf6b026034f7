"""Started as root, the launcher gives root up before it starts anything: Redis, the web server,
both Celery workers and beat run as an unprivileged account (Celery's own warning about running
as root never appears), a data directory behind a closed directory still works (traverse-only
ACL), and an account that cannot be used is refused instead of falling back to root."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until

from .test_launcher import ROOT, descendants, output_until_up, wait_until_gone

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping root can only be tested when the tests run as root"),
]

CELERY_ROOT_WARNING = "superuser privileges"


@pytest.fixture
def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uids_of(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(value) for value in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


def launch(data_dir: Path, port: int, **extra_env: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BILEVEL_TEST_SQLITE",
                                                             "BILEVEL_RUN_AS")}
    env.update(BILEVEL_DATA_DIR=str(data_dir), **extra_env)
    return subprocess.Popen([sys.executable, "manage.py", "launch", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_log_lines(log_dir: Path, wanted: dict[str, str], timeout: float = 180) -> bool:
    """Poll the children's logs until each holds its line (a worker is up once Celery says 'ready.')."""
    def all_there() -> bool:
        texts = {name: (log_dir / name).read_text(errors="replace") if (log_dir / name).exists() else ""
                 for name in wanted}
        return all(line in texts[name] for name, line in wanted.items())

    try:
        return wait_until(all_there, timeout, "the children's log lines", interval=0.2)
    except AssertionError:
        return False


@pytest.fixture
def closed_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory under a directory only root may enter (like a checkout under /root)."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    yield closed / "data"


def test_launcher_started_as_root_runs_every_service_unprivileged(closed_data_dir: Path, free_tcp_port: int) -> None:
    process = launch(closed_data_dir, free_tcp_port)
    try:
        output = output_until_up(process)
        assert process.stdout is not None
        for line in process.stdout:  # the launcher reports Level 2's isolation right after it is up
            output += line
            if line.startswith("Logs:"):
                break
        account = pwd.getpwnam("bilevel")
        assert account.pw_uid != 0
        assert "running as 'bilevel'" in output
        assert "traverse-only access" in output  # the closed directory was opened for passing through only

        # The sandbox check ran as 'bilevel' too: unprivileged bubblewrap still confines Level 2.
        assert "Level 2: generated mechanisms run under kernel isolation" in output

        ready = wait_for_log_lines(closed_data_dir / "logs", {"worker-train.log": " ready.",
                                                              "worker-research.log": " ready.",
                                                              "beat.log": "beat: Starting..."})
        assert ready, "the workers and beat did not start as 'bilevel'"
        tree = descendants(process.pid) | {process.pid}
        assert len(tree) >= 8  # launcher, redis, web, two workers and their pool processes, beat
        assert {pid: uids_of(pid) for pid in tree} == {pid: {account.pw_uid} for pid in tree}
        with urllib.request.urlopen(f"http://127.0.0.1:{free_tcp_port}/accounts/login/", timeout=20) as response:
            assert response.status == 200  # the web server reads and writes the database as 'bilevel'
        # Everything in the data directory belongs to the account (root created some of it at start).
        owners = {path: path.stat().st_uid for path in [closed_data_dir, *closed_data_dir.rglob("*")]}
        assert set(owners.values()) == {account.pw_uid}, owners
        # The closed directory still lets nobody else list it: the ACL grants 'bilevel' traverse only.
        acl = subprocess.run(["getfacl", "-p", str(closed_data_dir.parent)], capture_output=True, text=True,
                             check=True).stdout
        assert "user:bilevel:--x" in acl
        assert (closed_data_dir.parent.stat().st_mode & 0o007) == 0
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert wait_until_gone(tree, timeout=60) == set()
    logs = {path.name: path.read_text(errors="replace") for path in (closed_data_dir / "logs").glob("*.log")}
    assert not [name for name, text in logs.items() if CELERY_ROOT_WARNING in text]


@pytest.mark.parametrize(
    ("run_as", "reason"),
    [
        ("root", "BILEVEL_RUN_AS=root is refused"),
        ("no-such-account-here", "no such account"),
    ],
)
def test_launcher_refuses_rather_than_run_as_root(tmp_path: Path, free_tcp_port: int, run_as: str,
                                                  reason: str) -> None:
    process = launch(tmp_path / "data", free_tcp_port, BILEVEL_RUN_AS=run_as)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "not starting as root" in output and reason in output
    assert "started " not in output  # no child was started, as root or otherwise
    assert not (tmp_path / "data" / "logs").exists() or not list((tmp_path / "data" / "logs").glob("*.log"))


def test_launcher_refuses_an_account_that_cannot_read_the_application(tmp_path: Path, free_tcp_port: int) -> None:
    """'nobody' exists but is not the default account: it gets no ACL, so behind a closed directory it
    cannot reach the data directory, and the launcher says so instead of starting as root."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    env_path = os.environ.get("PATH", "")
    # Without setfacl on the PATH the launcher cannot open the closed directory for 'nobody'.
    bare_path = os.pathsep.join(p for p in env_path.split(os.pathsep) if not (Path(p) / "setfacl").exists())
    process = launch(closed / "data", free_tcp_port, BILEVEL_RUN_AS="nobody", PATH=bare_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "not starting as root" in output
    assert "cannot reach the application" in output and str(closed) in output
    assert "started " not in output


def test_handing_over_the_data_directory_never_follows_a_planted_link(tmp_path: Path) -> None:
    """The account owns the data directory between launches, so it may leave links there pointing at
    root's files; root's chown at the next start must change only what is inside the directory."""
    from runs.ops.privileges import find_or_create_account, hand_over

    outside = tmp_path / "roots-own"
    outside.mkdir()
    (outside / "precious").write_text("root's")
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "web.log").write_text("")
    (data / "to-a-directory").symlink_to(outside, target_is_directory=True)
    (data / "logs" / "to-a-file").symlink_to(outside / "precious")
    account = find_or_create_account("bilevel", data / "home", say=lambda text: None)

    hand_over(data, account)

    assert outside.stat().st_uid == 0 and (outside / "precious").stat().st_uid == 0
    assert (data / "logs" / "web.log").stat().st_uid == account.uid
    assert (data / "to-a-directory").lstat().st_uid == account.uid  # the link itself, not its target


def test_a_secret_key_link_is_refused_not_followed(tmp_path: Path, free_tcp_port: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    target = tmp_path / "created-by-root-elsewhere"
    (data / "secret_key").symlink_to(target)  # dangling: following it would create the target as root
    process = launch(data, free_tcp_port)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "must be a regular file, not a symbolic link" in output
    assert not target.exists()


@pytest.mark.parametrize("part", ["worker", "beat"])
def test_a_worker_or_beat_started_directly_as_root_refuses(tmp_path: Path, part: str) -> None:
    """Started by hand as root (as the README's 'more workers' section starts them), not by the launcher:
    the worker and beat stop before they consume or schedule anything, saying how to start them."""
    env = {k: v for k, v in os.environ.items() if k != "BILEVEL_ALLOW_ROOT_WORKER"}
    env["BILEVEL_DATA_DIR"] = str(tmp_path)
    extra = ["-Q", "train", "-c", "1", "--without-gossip", "--without-mingle"] if part == "worker" else [
        "-s", str(tmp_path / "schedule")]
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "bilevel_site", part, *extra], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"refuses to run a Celery {part} as root" in output and "runuser -u bilevel" in output
    assert " ready." not in output and "beat: Starting..." not in output
