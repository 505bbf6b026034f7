"""Run ``python -m trainer`` as a supervised subprocess: the API the Celery worker calls.

No torch and no Django here. The child runs in its own session (process group), so a hard
timeout, an exception in a progress callback or any other exit path kills the trainer *and*
anything it spawned: the group is always SIGKILLed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from trainer.outcomes import TrainingSummary
from trainer.schema import config_to_json
from trainer.warm import WARM_TRAINER, WarmChild, Zygote, ZygoteError, die_with_parent, warm_enabled

LINE_TYPES = ("progress", "summary")
STDERR_TAIL_LINES = 20
# Worst-case sustained FLOP/s assumed by default_timeout: cpu-tiny reaches ~5e10 FLOP/s on two
# idle cores, so 5e9 allows a 10x slowdown from a loaded machine or a single thread.
ASSUMED_FLOPS_PER_SECOND = {"cpu-tiny": 5e9, "gpu": 5e12}
# Fixed allowance for interpreter start, torch import, corpus loading and the final evaluation.
STARTUP_AND_EVAL_SECONDS = 120.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent
GROUP_EXIT_WAIT_SECONDS = 5.0

ProgressCallback = Callable[[dict[str, Any]], None]


def parse_line(line: str | bytes) -> dict[str, Any] | None:
    """The JSON object on a trainer stdout line if it is a progress or summary line, else ``None``."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or parsed.get("type") not in LINE_TYPES:
        return None
    return parsed


def default_timeout(budget_kind: str, budget_value: float, *, preset: str = "cpu-tiny") -> float:
    """A generous hard timeout for one run: far beyond a normal run, but finite."""
    if budget_kind == "seconds":
        return budget_value * 3 + STARTUP_AND_EVAL_SECONDS
    if budget_kind == "flops":
        return budget_value / ASSUMED_FLOPS_PER_SECOND[preset] + STARTUP_AND_EVAL_SECONDS
    raise ValueError(f"budget kind must be 'flops' or 'seconds', got {budget_kind!r}")


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child_env = dict(os.environ)
    child_env.update(env or {})
    # The child runs in workdir, so make sure it still finds this package.
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), child_env.get("PYTHONPATH")]))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    return child_env


def prestart_warm_trainer(env: Mapping[str, str] | None = None, *, wait: bool = False) -> None:
    """Start this process's warm zygote now, so that its first training does not pay for torch's import.

    A training worker calls this when it starts; ``wait`` blocks until the zygote is ready.
    """
    WARM_TRAINER.prestart(_child_env(env), wait=wait)


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    try:
        for raw in stream:
            lines.put(raw)
    finally:
        lines.put(None)


def _living_group_members(group: int) -> list[int]:
    """Pids in process group ``group`` that are not yet dead (zombies count as dead). Linux /proc only."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _kill_group(process: subprocess.Popen[bytes] | WarmChild) -> None:
    """SIGKILL the child's whole process group and wait (briefly) until every member is dead.

    SIGKILL is delivered asynchronously; waiting here means that when run_training returns, no
    trainer or grandchild of it is still running (where /proc exists to check).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group may already be gone
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + GROUP_EXIT_WAIT_SECONDS
    while _living_group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _start(
    command: list[str], *, workdir: Path, env: dict[str, str], stderr_file: IO[bytes], zygote: Zygote | None
) -> subprocess.Popen[bytes] | WarmChild:
    """A fork of the warm zygote when there is one, else (or if the fork fails) a new interpreter."""
    if zygote is not None:
        read_fd, write_fd = os.pipe()
        stdout = os.fdopen(read_fd, "rb")
        try:
            # command[3:]: the arguments after "python -m trainer"
            return zygote.spawn(
                command[3:], cwd=workdir, env=env, stdout_fd=write_fd, stderr_fd=stderr_file.fileno(), stdout=stdout
            )
        except ZygoteError as exc:
            sys.stderr.write(f"warm trainer failed to fork, starting cold: {exc}\n")
            zygote.broken = True
            stdout.close()
        finally:
            os.close(write_fd)  # the child holds its own copy: EOF comes when it (and its group) exits
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _reap(process: subprocess.Popen[bytes] | WarmChild) -> None:
    """Collect the killed child's exit status (a warm child's comes from its zygote, which reaps it)."""
    if isinstance(process, WarmChild):
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=GROUP_EXIT_WAIT_SECONDS)
        return
    process.wait()


def _stderr_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown exit status"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        hint = " (possibly the kernel's out-of-memory killer)" if -returncode == signal.SIGKILL else ""
        return f"killed by signal {-returncode} ({name}){hint}"
    return f"exit code {returncode}"


def run_training(
    config: Mapping[str, Any],
    *,
    preset: str,
    budget_kind: str,
    budget_value: float,
    seed: int,
    threads: int,
    workdir: Path,
    timeout_seconds: float,
    on_progress: ProgressCallback | None = None,
    env: Mapping[str, str] | None = None,
    warm: bool | None = None,
    corpus_dir: Path | str | None = None,
    deterministic: str = "auto",
) -> TrainingSummary:
    """Train ``config`` in a subprocess and return its summary.

    ``on_progress`` is called in the caller's thread for every progress line. The run is killed
    (whole process group) after ``timeout_seconds`` and reported as ``timeout``; a process that
    ends without a summary is ``crashed`` with the tail of its stderr. ``env`` adds variables to
    the inherited environment. ``workdir`` receives config.json, stderr.log and summary.json.
    ``warm`` (default: on unless ``BILEVEL_TRAINER_WARM=0``) forks the training from this
    process's warm zygote instead of starting a new interpreter (``trainer.warm``); the timeout
    counts from the fork or the start. ``corpus_dir`` trains on a user's text directory instead of
    the embedded plays (``trainer.corpus_dir``). ``deterministic`` is the trainer's
    ``--deterministic`` (CUDA kernels; ``auto`` = on for FLOP budgets).
    """
    use_warm = warm_enabled() if warm is None else warm
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config_to_json(dict(config)), indent=2) + "\n")
    stderr_path = workdir / "stderr.log"
    command = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        str(config_path),
        "--preset",
        preset,
        "--budget-kind",
        budget_kind,
        "--budget",
        repr(float(budget_value)),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
        "--workdir",
        str(workdir),
        *(["--corpus-dir", str(Path(corpus_dir).resolve())] if corpus_dir is not None else []),
        "--deterministic",
        deterministic,
    ]
    child_env = _child_env(env)

    started = time.monotonic()
    with open(stderr_path, "wb") as stderr_file, contextlib.ExitStack() as stack:
        zygote = stack.enter_context(WARM_TRAINER.acquire(child_env)) if use_warm else None
        process = _start(command, workdir=workdir, env=child_env, stderr_file=stderr_file, zygote=zygote)
        deadline = time.monotonic() + timeout_seconds
        summary_line: dict[str, Any] | None = None
        last_progress: dict[str, Any] | None = None
        garbage_lines = 0
        timed_out = False
        assert process.stdout is not None
        lines: queue.Queue[bytes | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                try:
                    raw = lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if raw is None:
                    break
                parsed = parse_line(raw)
                if parsed is None:
                    garbage_lines += raw.strip() != b""
                elif parsed["type"] == "summary":
                    summary_line = parsed
                else:
                    last_progress = parsed
                    if on_progress is not None:
                        on_progress(parsed)
            if not timed_out:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = summary_line is None
        finally:
            _kill_group(process)
            _reap(process)
            reader.join(timeout=5)
            process.stdout.close()

    wall_seconds = time.monotonic() - started
    common: dict[str, Any] = {
        "preset": preset,
        "budget_kind": budget_kind,
        "budget_value": budget_value,
        "seed": seed,
        "threads": threads,
        "garbage_lines": garbage_lines,
        "wall_seconds": wall_seconds,
    }
    process_info: dict[str, Any] = {
        "pid": process.pid,
        "returncode": process.returncode,
        "warm": isinstance(process, WarmChild),
    }
    if summary_line is not None:
        summary = TrainingSummary.from_dict(summary_line | common)
        summary.extra.update(process_info)
        return summary
    reached: dict[str, Any] = {
        "steps": int(last_progress.get("step", 0)) if last_progress else 0,
        "tokens": int(last_progress.get("tokens", 0)) if last_progress else 0,
        "training_seconds": float(last_progress.get("elapsed", 0.0)) if last_progress else 0.0,
    }
    if timed_out:
        return TrainingSummary(
            failure_class="timeout",
            error=f"killed after the hard timeout of {timeout_seconds:g} s",
            **reached,
            **common,
            extra=process_info | {"stderr_tail": _stderr_tail(stderr_path)},
        )
    tail = _stderr_tail(stderr_path)
    return TrainingSummary(
        failure_class="crashed",
        error=f"the trainer ended without a summary ({_describe_exit(process.returncode)})"
        + (f":\n{tail}" if tail else ""),
        **reached,
        **common,
        extra=process_info,
    )
