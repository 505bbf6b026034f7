"""bench/local_llm_measure.py: --seed sets the experiment's seed base, and its throw-away data folder is
removed at the end unless --keep-data (against a scripted OpenAI-compatible server; one proposal)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.openai_stub import ScriptedOpenAI, scripted_openai


@pytest.fixture
def stub() -> Iterator[ScriptedOpenAI]:
    yield from scripted_openai()


def measure(stub: ScriptedOpenAI, temp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    stub.script = [{"content": json.dumps({"changes": {"WEIGHT_DECAY": 0.1}, "hypothesis": "h"})}]
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temp)}
    argv = [sys.executable, "bench/local_llm_measure.py", "--base-url", stub.base_url, "--model", "m",
            "--iterations", "1", "--repeats", "1", "--groups", "A", *extra]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def test_the_data_folder_is_removed_unless_kept_and_the_seed_is_the_experiments(
        stub: ScriptedOpenAI, tmp_path: Path) -> None:
    result = measure(stub, tmp_path / "removed", "--seed", "7")
    assert list((tmp_path / "removed").iterdir()) == []
    assert '"seed": 7' in result.stdout and '"valid": 1' in result.stdout

    result = measure(stub, tmp_path / "kept", "--seed", "11", "--keep-data")
    kept = [line.removeprefix("data kept in ") for line in result.stdout.splitlines() if line.startswith("data kept")]
    assert len(kept) == 1 and Path(kept[0]).parent == tmp_path / "kept"
    database = next(Path(kept[0]).rglob("*.sqlite3"))
    with sqlite3.connect(database) as connection:
        seeds = connection.execute("SELECT e.seed_base, r.seed FROM runs_experiment e JOIN runs_run r "
                                   "ON r.experiment_id = e.id").fetchall()
    assert seeds == [(11, 12)]  # repeat r runs on seed_base + r
