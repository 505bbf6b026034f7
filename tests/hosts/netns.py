"""A second host on this machine, made with the kernel's own tools, for the multi-host tests.

The host is a network namespace with its own loopback and one end of a veth pair; the other end
stays in the test's namespace. The pair is a private /30 link in 10.231.0.0/16 that the test
creates (and checks is unused) and deletes afterwards: no other address is ever used. PostgreSQL
and Redis listen on 127.0.0.1 only, so a small forwarder (tests/hosts/forwarder.py) listens on the
root-side link address and relays to them. Inside, the worker also gets its own hostname (a UTS
namespace), its own pid namespace (so its pids mean nothing here: the lease must judge it by its
heartbeat, as it would a real remote host), its own data directory and its own unprivileged user.
It is started with the README's command, `python3 bootstrap.py worker`, as root: the command gives
root up itself.

A partition is the link going down on the test's side while every process keeps running; healing
brings it back up (addresses survive, the stalled connections carry on).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bilevel_site.clock_skew import OFFSET_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
FORWARDER = Path(__file__).with_name("forwarder.py")
ACCOUNT = "bilevel-hostb"


def why_no_second_host() -> str | None:
    """None if this machine can make a second host; else why the multi-host tests skip."""
    if os.geteuid() != 0:
        return "making a second host (ip netns, veth, unshare) needs root; run the suite as root (CI does)"
    missing = [tool for tool in ("ip", "unshare", "useradd") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (Debian iproute2 / util-linux / passwd; bootstrap.py test installs them)"
    probe = f"bilevel-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def unused_link_prefix() -> str:
    """A 10.231.N.0/30 that no interface of this namespace uses yet."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(50):
        prefix = f"10.231.{random.randrange(256)}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.231.N.0/30 link found")


def ensure_account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--comment", "bilevel second test host", name], check=True)
        return pwd.getpwnam(name)


class SecondHost:
    """Another host: its namespace, link, forwarder, account, data directory and training worker."""

    def __init__(self, env: dict[str, str], *, database: tuple[str, int], redis: tuple[str, int],
                 clock_offset_seconds: float = 0.0) -> None:
        self.tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.namespace = f"bilevel-hostb-{self.tag}"
        self.hostname = f"hostb-{self.tag}"
        self.outer_link, self.inner_link = f"blv{self.tag}a", f"blv{self.tag}b"
        prefix = unused_link_prefix()
        self.outer_address, self.inner_address = f"{prefix}.1", f"{prefix}.2"
        self.account = ensure_account(ACCOUNT)
        self.data_dir = Path(tempfile.mkdtemp(prefix="bilevel-hostb-"))
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.forwarder: subprocess.Popen[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._make_link()
        ports = self._start_forwarder([f"{database[0]}:{database[1]}", f"{redis[0]}:{redis[1]}"])
        self.env = self._worker_env(env, ports[f"{database[0]}:{database[1]}"], ports[f"{redis[0]}:{redis[1]}"],
                                    clock_offset_seconds)

    # -- set-up -------------------------------------------------------------------------------

    def _make_link(self) -> None:
        ip("netns", "add", self.namespace)
        ip("link", "add", self.outer_link, "type", "veth", "peer", "name", self.inner_link)
        ip("link", "set", self.inner_link, "netns", self.namespace)
        ip("addr", "add", f"{self.outer_address}/30", "dev", self.outer_link)
        ip("link", "set", self.outer_link, "up")
        ip("-n", self.namespace, "addr", "add", f"{self.inner_address}/30", "dev", self.inner_link)
        ip("-n", self.namespace, "link", "set", self.inner_link, "up")
        ip("-n", self.namespace, "link", "set", "lo", "up")

    def _start_forwarder(self, targets: list[str]) -> dict[str, int]:
        self.forwarder = subprocess.Popen([sys.executable, str(FORWARDER), self.outer_address, *targets],
                                          stdout=subprocess.PIPE, text=True)
        assert self.forwarder.stdout is not None
        line = self.forwarder.stdout.readline()
        if not line:
            raise RuntimeError("the forwarder did not start")
        return {target: int(port) for target, port in json.loads(line).items()}

    def _worker_env(self, base: dict[str, str], db_port: int, redis_port: int, clock_offset: float) -> dict[str, str]:
        env = {key: value for key, value in base.items() if not key.startswith(("DATABASE_", "REDIS_", "BILEVEL_"))}
        # Everything the worker reaches, it reaches over the link.
        env["DATABASE_URL"] = _rehost(base["DATABASE_URL"], self.outer_address, db_port)
        env["REDIS_URL"] = _rehost(base["REDIS_URL"], self.outer_address, redis_port)
        env["BILEVEL_DATA_DIR"] = str(self.data_dir)
        env["BILEVEL_RUN_AS"] = self.account.pw_name
        env.update({key: value for key, value in base.items() if key.startswith("BILEVEL_") and key not in (
            "BILEVEL_DATA_DIR", "BILEVEL_ALLOW_ROOT_WORKER", "BILEVEL_TEST_SQLITE")})
        if clock_offset:
            env[OFFSET_VARIABLE] = str(clock_offset)  # this host's wall clock, as Django reads it, is off
        return env

    # -- the worker -----------------------------------------------------------------------------

    def start_worker(self) -> None:
        """`python3 bootstrap.py worker` in the namespace, with its own hostname and pid namespace."""
        command = ["ip", "netns", "exec", self.namespace,
                   "unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
                   "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname,
                   "python3", "bootstrap.py", "worker"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_log(self) -> str:
        """The Celery worker's own log (the command supervises it and writes it in the data directory)."""
        path = self.data_dir / "logs" / "worker-train.log"
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")
        return ""

    def launcher_pid(self) -> int | None:
        """The host-side pid of `bootstrap.py worker` (pid 1 of the host's pid namespace)."""
        if self.process is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            return int(children[0]) if children else None
        return None

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the command; returns its exit code once everything it started is gone."""
        assert self.process is not None
        pid = self.launcher_pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)

    # -- the link -------------------------------------------------------------------------------

    def partition(self) -> None:
        ip("link", "set", self.outer_link, "down")

    def heal(self) -> None:
        ip("link", "set", self.outer_link, "up")

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # unshare --kill-child takes the whole pid namespace with it
            self.process.wait()
        if self.forwarder is not None:
            self.forwarder.kill()
            self.forwarder.wait()
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.outer_link], capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)  # its content is in any failure message (Site.logs)


def _rehost(url: str, host: str, port: int) -> str:
    """The same service URL (user, password, database) at another host and port."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}{host}:{port}"))

