"""Tuned starts: the shipped file's entry is backed by the real measurements it names, and bad files are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.schema import default_config, validate_config
from trainer.tuned_start import TUNED_STARTS_PATH, TunedStartError, load_tuned_starts, tuned_start

# The real measurements a tuned start cites (the surrogate's: tuned-start confirmations are recorded there too).
MEASUREMENT_FILES = [TUNED_STARTS_PATH.parent / "surrogate_measurements.json"]


def shipped_entry() -> dict[str, Any]:
    return json.loads(TUNED_STARTS_PATH.read_text())["cpu-tiny"]


def real_values(config: dict[str, Any], seed: int, flops: float) -> list[float]:
    return [
        m["val_bpb"]
        for path in MEASUREMENT_FILES
        for m in json.loads(Path(path).read_text())["measurements"]
        if m["seed"] == seed and m["budget_kind"] == "flops" and m["budget_value"] == flops
        and m["failure_class"] == "ok" and validate_config(m["config"]) == validate_config(config)
    ]


def test_cpu_tiny_tuned_start_is_backed_by_the_real_measurements_it_cites() -> None:
    start = tuned_start("cpu-tiny")
    assert start is not None and len(start.seeds) >= 3, "confirmed on several seeds"
    for seed, value, default in zip(start.seeds, start.real_val_bpb, start.default_real_val_bpb, strict=True):
        assert value in real_values(start.config, seed, start.budget_flops), f"seed {seed}: no measurement of {value}"
        assert default in real_values(default_config(), seed, start.budget_flops)
        assert value < default  # better than the default on every seed, not only on average
    assert start.mean_gain_over_default is not None and start.mean_gain_over_default < -0.1
    assert start.threads == 1


def test_no_preset_without_an_entry_gets_one() -> None:
    assert tuned_start("gpu") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"real_val_bpb": []}, "one value per distinct seed"),
        ({"seeds": [1, 1], "real_val_bpb": [2.6, 2.7]}, "one value per distinct seed"),
        ({"real_val_bpb": ["2.6"]}, "must be a finite number"),
        ({"config": {"DEPTH": 4}}, "invalid config"),
        ({"source": " "}, "source"),
        ({"budget_flops": -1}, "positive budget_flops"),
        ({"surprise": 1}, "unknown keys ['surprise']"),
        ({"default_real_val_bpb": [3.1, 3.2]}, "one value per seed"),
    ],
)
def test_malformed_entries_are_refused_with_the_reason(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"cpu-tiny": shipped_entry() | change}))
    with pytest.raises(TunedStartError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_tuned_starts(path)


def test_unknown_preset_and_unreadable_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"tpu": shipped_entry()}))
    with pytest.raises(TunedStartError, match="unknown preset"):
        load_tuned_starts(path)
    path.write_text("{not json")
    with pytest.raises(TunedStartError, match="cannot read"):
        load_tuned_starts(path)
