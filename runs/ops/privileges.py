"""The launcher never leaves its services running as root.

Started as root (how `bootstrap.py up` runs in a container or on a fresh server), the launcher
first becomes an unprivileged account, so that Redis, the web server, the Celery workers, beat
and every trainer run without root, as Celery's documentation asks
(https://docs.celeryq.dev/en/stable/userguide/daemonizing.html#running-the-worker-with-superuser-privileges-root).

What it does as root, before it gives root up (each step is printed):
- the account is BILEVEL_RUN_AS, by default `bilevel`; the default is created as a system account
  with no login shell when missing; any other name must already exist;
- the data directory (database, logs, trainings, embedded Redis) is handed to that account;
- the account must be able to reach the interpreter, the packages and the code. Where a directory
  on the way lets nobody else through (a checkout under /root, mode 700), it is given traverse-only
  access to it with a POSIX ACL (`setfacl -m u:bilevel:--x DIR`: it can pass through, not list or
  read), and nothing else changes. Without `setfacl` (Debian package `acl`) it refuses;
- it then proves the account can import the application and write the data directory, and refuses
  with the reason if it cannot. It never falls back to running as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ACCOUNT = "bilevel"
# What a worker needs to import to start; the probe runs it as the account.
PROBE_CODE = (
    "import os, sys, django, celery, daphne; from pathlib import Path; "
    "p = Path(sys.argv[1]) / '.write-probe'; p.write_text('ok'); p.unlink(); print(os.getuid())"
)


class PrivilegeError(Exception):
    """The launcher cannot become an unprivileged account; the message says why and what to do."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path


def wanted_account_name() -> str:
    return os.environ.get("BILEVEL_RUN_AS", "").strip() or DEFAULT_ACCOUNT


def find_or_create_account(name: str, home: Path, say: Callable[[str], None]) -> Account:
    if name == "root" or name == "0":
        raise PrivilegeError("BILEVEL_RUN_AS=root is refused: the services do not run as root. "
                             "Name an unprivileged account, or leave it unset for the 'bilevel' account.")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_ACCOUNT:
            raise PrivilegeError(f"BILEVEL_RUN_AS={name}: no such account. Create it, or leave BILEVEL_RUN_AS "
                                 f"unset to have the launcher create the '{DEFAULT_ACCOUNT}' system account.") from None
        useradd = shutil.which("useradd")
        if useradd is None:
            raise PrivilegeError("running as root and the 'bilevel' account is missing, but there is no useradd "
                                 "to create it. Create an unprivileged account and set BILEVEL_RUN_AS.") from None
        subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
                        "--shell", "/usr/sbin/nologin", "--comment", "bilevel services", name], check=True)
        say(f"created the system account '{name}' (no login shell) to run the services")
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise PrivilegeError(f"BILEVEL_RUN_AS={name} has uid 0, which is root under another name; refused.")
    return Account(name, entry.pw_uid, entry.pw_gid, home)


def hand_over(directory: Path, account: Account) -> None:
    """Make the account own everything in the data directory (files root created: the secret key, logs).

    The account could have planted symbolic links there on an earlier run. Walking with directory
    descriptors and never following a link (os.fwalk, chown with follow_symlinks=False) means root
    only ever changes entries inside the directory itself, even if a link replaces a directory
    during the walk.
    """
    os.chown(directory, account.uid, account.gid, follow_symlinks=False)
    for _root, dirs, files, dir_fd in os.fwalk(directory, follow_symlinks=False):
        for name in [*dirs, *files]:
            os.chown(name, account.uid, account.gid, dir_fd=dir_fd, follow_symlinks=False)


def can_traverse(directory: Path, account: Account) -> bool:
    info = directory.stat()
    if info.st_uid == account.uid:
        return bool(info.st_mode & 0o100)
    if info.st_gid == account.gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def closed_directories(paths: list[Path], account: Account) -> list[Path]:
    """Directories above the given paths that the account cannot pass through by their mode bits."""
    closed: list[Path] = []
    for path in paths:
        resolved = path.resolve()
        chain = [*reversed(resolved.parents), *([resolved] if resolved.is_dir() else [])]
        for directory in chain:
            if directory not in closed and not can_traverse(directory, account):
                closed.append(directory)
    return closed


def grant_traverse(directories: list[Path], account: Account, say: Callable[[str], None]) -> None:
    if not directories:
        return
    setfacl = shutil.which("setfacl")
    listed = ", ".join(str(d) for d in directories)
    if setfacl is None:
        raise PrivilegeError(
            f"the account '{account.name}' cannot reach the application through {listed} (no permission to "
            f"pass through), and setfacl (Debian package 'acl') is missing to grant it that alone. Install acl, "
            f"or move the checkout and its interpreter somewhere the account can read."
        )
    for directory in directories:
        result = subprocess.run([setfacl, "-m", f"u:{account.name}:--x", str(directory)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise PrivilegeError(f"could not give '{account.name}' traverse access to {directory}: "
                                 f"{result.stderr.strip()}")
    say(f"gave '{account.name}' traverse-only access (ACL u:{account.name}:--x, no listing or reading) to {listed}")


def probe(account: Account, data_dir: Path, cwd: Path) -> str:
    """Run the import-and-write probe as the account; empty if it works, else what went wrong."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE_CODE, str(data_dir)], cwd=cwd, capture_output=True, text=True,
        user=account.uid, group=account.gid, extra_groups=[], env={**os.environ, "HOME": str(account.home)},
        timeout=120,
    )
    if result.returncode == 0 and result.stdout.strip() == str(account.uid):
        return ""
    return (result.stderr.strip().splitlines() or ["(no output)"])[-1]


def become(account: Account) -> None:
    os.setgroups([])
    os.setgid(account.gid)
    os.setuid(account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - only a broken kernel or setuid-root interpreter would get here
        raise PrivilegeError("root could be regained after dropping it; refusing to continue")
    os.environ.update(HOME=str(account.home), USER=account.name, LOGNAME=account.name)


def drop_root(data_dir: Path, base_dir: Path, say: Callable[[str], None]) -> Account | None:
    """As root: become the unprivileged account (see the module docstring). Otherwise: nothing to do."""
    if os.geteuid() != 0:
        return None
    home = data_dir / "home"
    account = find_or_create_account(wanted_account_name(), home, say)
    home.mkdir(parents=True, exist_ok=True)
    hand_over(data_dir, account)
    needed = [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix), Path(shutil.__file__), base_dir, data_dir]
    grant_traverse(closed_directories(needed, account), account, say)
    problem = probe(account, data_dir, base_dir)
    if problem:
        raise PrivilegeError(f"the account '{account.name}' cannot run the application: {problem}. "
                             "The services are not started as root instead.")
    become(account)
    say(f"running as '{account.name}' (uid {account.uid}), not root: Redis, the web server, the workers and "
        "every training inherit it")
    return account
