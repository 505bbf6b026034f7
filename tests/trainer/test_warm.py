"""Warm trainer workers: a training forked from the zygote is the same training as a cold start."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from trainer.__main__ import HANG_PID_FILE, TEST_HOOK_ENV
from trainer.outcomes import TrainingSummary
from trainer.schema import default_config
from trainer.warm import WARM_TRAINER, import_time_env

from .test_launch import launch, process_is_gone


def trained(workdir: Path, *, warm: bool, config: dict[str, Any] | None = None, **overrides: Any) -> TrainingSummary:
    """A short training (a few steps), with its progress lines' losses kept in ``extra``."""
    progress: list[dict[str, Any]] = []
    arguments = dict(budget_value=1.2e11, seed=7, timeout_seconds=180.0, on_progress=progress.append, warm=warm)
    summary = launch(config or default_config(), workdir, **(arguments | overrides))
    # Progress lines come on a clock, so two trainings report different steps; compare by step.
    summary.extra["progress_losses"] = {line["step"]: line["train_loss"] for line in progress}
    return summary


def zygote_pid() -> int:
    assert WARM_TRAINER._zygote is not None
    return WARM_TRAINER._zygote.process.pid


def test_warm_trainings_are_bit_identical_to_a_cold_start_and_to_each_other(tmp_path: Path) -> None:
    cold = trained(tmp_path / "cold", warm=False)
    first = trained(tmp_path / "warm-1", warm=True)
    zygote = zygote_pid()
    second = trained(tmp_path / "warm-2", warm=True)
    assert cold.failure_class == first.failure_class == second.failure_class == "ok", (cold.error, first.error)
    assert cold.extra["warm"] is False and first.extra["warm"] is True and second.extra["warm"] is True
    # Bit-identical, not close: the same seed gives the same model whatever process trained it,
    # and a training leaves nothing behind that the next one (same zygote, same seed) could see.
    assert first.val_bpb == cold.val_bpb and second.val_bpb == cold.val_bpb
    assert first.extra["final_train_loss"] == second.extra["final_train_loss"] == cold.extra["final_train_loss"]
    shared_steps = set(first.extra["progress_losses"]) & set(cold.extra["progress_losses"])
    assert shared_steps
    assert all(first.extra["progress_losses"][step] == cold.extra["progress_losses"][step] for step in shared_steps)
    # Each training is its own process (forked from one zygote), reaped with its exit status.
    assert zygote_pid() == zygote and len({cold.extra["pid"], first.extra["pid"], second.extra["pid"], zygote}) == 4
    assert first.extra["returncode"] == second.extra["returncode"] == 0
    assert process_is_gone(first.extra["pid"]) and process_is_gone(second.extra["pid"])


def test_a_dead_zygote_is_replaced(tmp_path: Path) -> None:
    bad = default_config() | {"WINDOW_PATTERN": "SXL"}  # rejected in the child without training: fast
    assert trained(tmp_path / "a", warm=True, config=bad).extra["warm"] is True
    old = zygote_pid()
    os.kill(old, signal.SIGKILL)
    # Killed just now, it may not look dead yet: then this training starts cold instead of failing.
    assert trained(tmp_path / "b", warm=True, config=bad).failure_class == "invalid_config"
    summary = trained(tmp_path / "c", warm=True, config=bad)
    assert summary.failure_class == "invalid_config" and summary.extra["warm"] is True
    assert zygote_pid() != old


def test_warm_timeout_kills_the_forked_training_and_its_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HOOK_ENV, "hang")  # a BILEVEL_* variable: the same zygote serves it
    summary = trained(tmp_path, warm=True, timeout_seconds=3.0)
    assert summary.failure_class == "timeout" and summary.extra["warm"] is True
    assert summary.extra["returncode"] == -signal.SIGKILL
    assert process_is_gone(summary.extra["pid"])
    assert process_is_gone(int((tmp_path / HANG_PID_FILE).read_text()))  # the launcher waited for the group
    assert not process_is_gone(zygote_pid())  # the zygote is in its own session: it survives


def test_the_zygote_is_keyed_by_the_environment_torch_reads_at_import() -> None:
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1"}
    assert import_time_env(base | {"BILEVEL_TRAINER_TEST_HOOK": "hang"}) == base
    assert import_time_env(base | {"OMP_NUM_THREADS": "2"}) != base
    assert import_time_env(base | {"PYTEST_CURRENT_TEST": "test_x (call)"}) == base


@pytest.mark.parametrize(("queues", "starts"), [({"train": None}, True), ({"research": None, "default": None}, False)])
def test_a_train_workers_pool_process_starts_its_warm_trainer_when_it_starts(
    monkeypatch: pytest.MonkeyPatch, queues: dict[str, Any], starts: bool
) -> None:
    import trainer.launch
    from bilevel_site import celery

    started: list[bool] = []
    monkeypatch.setattr(trainer.launch, "prestart_warm_trainer", lambda: started.append(True))
    monkeypatch.setattr(celery.app.amqp.queues, "_consume_from", queues)
    celery.start_warm_trainer()
    assert started == ([True] if starts else [])
