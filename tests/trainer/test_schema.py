"""The search-space schema: parsing, range checks, messages, cross-field checks, proposals."""

from __future__ import annotations

import json

import pytest

from trainer.schema import (
    KNOBS,
    PRESET_SETTINGS,
    PRESETS,
    ConfigError,
    Knob,
    apply_changes,
    coerce_knob,
    coerce_value,
    default_config,
    model_width,
    schema_json,
    validate_config,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_defaults_are_valid_and_complete(preset: str) -> None:
    config = default_config(preset)
    assert set(config) == set(KNOBS)
    assert validate_config(config, preset=preset) == config


def test_schema_json_is_json_serialisable_and_describes_every_knob() -> None:
    entries = schema_json("cpu-tiny")
    assert [entry["name"] for entry in entries] == list(KNOBS)
    json.dumps(entries)
    by_name = {entry["name"]: entry for entry in entries}
    assert by_name["DEPTH"]["locked"] and by_name["ASPECT_RATIO"]["locked"]
    assert not by_name["MATRIX_LR"]["locked"] and by_name["MATRIX_LR"]["log"]
    assert by_name["TOTAL_BATCH_SIZE"] | {"description": ""} == {
        "name": "TOTAL_BATCH_SIZE",
        "type": "pow2",
        "min": 2**10,
        "max": 2**16,
        "choices": None,
        "log": True,
        "locked": False,
        "description": "",
        "default": 2**12,
    }
    assert by_name["ADAM_BETAS"]["default"] == [0.8, 0.95]
    assert by_name["WINDOW_PATTERN"]["choices"] == ["S", "L"]
    assert all(entry["description"] for entry in entries)


def test_presets_have_their_own_ranges() -> None:
    assert KNOBS["TOTAL_BATCH_SIZE"].to_json("gpu")["max"] == 2**21
    assert coerce_value("TOTAL_BATCH_SIZE", 2**19, preset="gpu") == 2**19
    with pytest.raises(ConfigError):
        coerce_value("TOTAL_BATCH_SIZE", 2**19)
    with pytest.raises(ConfigError, match="unknown preset 'tpu'"):
        default_config("tpu")


# --- int ----------------------------------------------------------------------------------------


def test_int_values() -> None:
    assert coerce_value("DEPTH", 6) == 6
    assert coerce_value("DEPTH", "6") == 6
    assert coerce_value("DEPTH", 6.0) == 6
    with pytest.raises(ConfigError, match=r"^DEPTH must be an integer, got 2\.5$"):
        coerce_value("DEPTH", 2.5)
    with pytest.raises(ConfigError, match="DEPTH must be an integer, got True"):
        coerce_value("DEPTH", True)
    with pytest.raises(ConfigError, match="DEPTH must be an integer between 1 and 32, got 40"):
        coerce_value("DEPTH", 40)


# --- float --------------------------------------------------------------------------------------


def test_float_values() -> None:
    assert coerce_value("MATRIX_LR", 0.04) == 0.04
    assert coerce_value("MATRIX_LR", "4e-2") == 0.04
    assert coerce_value("WEIGHT_DECAY", 0) == 0.0 and isinstance(coerce_value("WEIGHT_DECAY", 0), float)
    with pytest.raises(ConfigError, match=r"^MATRIX_LR must be a number, got 'fast'$"):
        coerce_value("MATRIX_LR", "fast")
    with pytest.raises(ConfigError, match="MATRIX_LR must be a number, got 'nan'"):
        coerce_value("MATRIX_LR", "nan")
    with pytest.raises(ConfigError, match="MATRIX_LR must be a number"):
        coerce_value("MATRIX_LR", float("inf"))
    with pytest.raises(ConfigError, match="MATRIX_LR must be a number"):
        coerce_value("MATRIX_LR", "__import__('os')")
    with pytest.raises(ConfigError, match=r"MATRIX_LR must be between 0\.001 and 1, got 3"):
        coerce_value("MATRIX_LR", 3)


# --- pow2 ---------------------------------------------------------------------------------------


def test_pow2_values() -> None:
    assert coerce_value("TOTAL_BATCH_SIZE", 2048) == 2048
    assert coerce_value("TOTAL_BATCH_SIZE", "2**11") == 2048
    assert coerce_value("TOTAL_BATCH_SIZE", "2 ** 11") == 2048
    assert coerce_value("TOTAL_BATCH_SIZE", 2048.0) == 2048
    with pytest.raises(
        ConfigError, match=r"^TOTAL_BATCH_SIZE must be a power of two between 2\*\*10 and 2\*\*16, got 2\*\*20\.25$"
    ):
        coerce_value("TOTAL_BATCH_SIZE", 2**20.25)
    with pytest.raises(ConfigError, match=r"got 2\*\*20$"):
        coerce_value("TOTAL_BATCH_SIZE", "2**20")
    with pytest.raises(ConfigError, match=r"got 2\*\*11\.55"):
        coerce_value("TOTAL_BATCH_SIZE", 3000)
    with pytest.raises(ConfigError, match=r"got -4$"):
        coerce_value("DEVICE_BATCH_SIZE", -4)
    with pytest.raises(ConfigError, match="got '3\\*\\*7'"):
        coerce_value("TOTAL_BATCH_SIZE", "3**7")


# --- pattern ------------------------------------------------------------------------------------


def test_window_pattern_values() -> None:
    assert coerce_value("WINDOW_PATTERN", "SSSL") == "SSSL"
    assert coerce_value("WINDOW_PATTERN", " sl ") == "SL"
    with pytest.raises(ConfigError, match=r"may only contain the characters SL, got 'SSXL' \(invalid: 'X'\)"):
        coerce_value("WINDOW_PATTERN", "SSXL")
    with pytest.raises(ConfigError, match="must have 1 to 8 characters, got 0"):
        coerce_value("WINDOW_PATTERN", "")
    with pytest.raises(ConfigError, match="must have 1 to 8 characters, got 9"):
        coerce_value("WINDOW_PATTERN", "S" * 9)
    with pytest.raises(ConfigError, match="must be a string"):
        coerce_value("WINDOW_PATTERN", 4)


# --- tuple --------------------------------------------------------------------------------------


def test_tuple_values() -> None:
    assert coerce_value("ADAM_BETAS", [0.9, 0.99]) == (0.9, 0.99)
    assert coerce_value("ADAM_BETAS", (0.9, 0.99)) == (0.9, 0.99)
    assert coerce_value("ADAM_BETAS", "[0.9, 0.99]") == (0.9, 0.99)
    assert coerce_value("ADAM_BETAS", "(0.9, 0.99)") == (0.9, 0.99)
    with pytest.raises(ConfigError, match=r"ADAM_BETAS\[1\] must be strictly between 0 and 1, got 1"):
        coerce_value("ADAM_BETAS", [0.9, 1.0])
    with pytest.raises(ConfigError, match="must be a list of 2 numbers"):
        coerce_value("ADAM_BETAS", [0.9])
    with pytest.raises(ConfigError, match="must be a list of 2 numbers"):
        coerce_value("ADAM_BETAS", "0.9, 0.99, oops")
    with pytest.raises(ConfigError, match="must be a list of 2 numbers"):
        coerce_value("ADAM_BETAS", ["a", 0.9])


# --- enum (no current knob is an enum; the type is part of the schema vocabulary) ---------------


def test_enum_values() -> None:
    knob = Knob("ACTIVATION", "enum", "test knob", defaults={"cpu-tiny": "relu2"}, choices=("relu2", "gelu"))
    assert coerce_knob(knob, "gelu") == "gelu"
    with pytest.raises(ConfigError, match="ACTIVATION must be one of 'relu2', 'gelu', got 'swish'"):
        coerce_knob(knob, "swish")


# --- whole configs ------------------------------------------------------------------------------


def test_unknown_parameter() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'LR'"):
        coerce_value("LR", 0.1)
    with pytest.raises(ConfigError, match="unknown parameter 'LR'"):
        validate_config(default_config() | {"LR": 0.1})


def test_validate_config_lists_every_problem() -> None:
    config = default_config() | {"MATRIX_LR": "fast", "HEAD_DIM": 48}
    del config["SCALAR_LR"]
    with pytest.raises(ConfigError) as caught:
        validate_config(config)
    assert len(caught.value.problems) == 3
    message = str(caught.value)
    assert "MATRIX_LR must be a number, got 'fast'" in message
    assert "HEAD_DIM must be a power of two between 2**4 and 2**7, got 2**5.585" in message
    assert "missing parameter 'SCALAR_LR'" in message


def test_validate_config_types_values() -> None:
    raw = default_config() | {"TOTAL_BATCH_SIZE": "2**13", "ADAM_BETAS": [0.9, 0.95], "MATRIX_LR": "0.03"}
    typed = validate_config(raw)
    assert typed["TOTAL_BATCH_SIZE"] == 8192 and typed["ADAM_BETAS"] == (0.9, 0.95) and typed["MATRIX_LR"] == 0.03


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="WINDOW_PATTERN 'SSSSL' has 5 characters but DEPTH is 4"):
        validate_config(default_config() | {"WINDOW_PATTERN": "SSSSL"})
    with pytest.raises(ConfigError, match=r"WARMUP_RATIO \+ WARMDOWN_RATIO must be at most 1, got 0.5 \+ 0.8 "
                                          r"\(with WARMDOWN_RATIO 0.8, WARMUP_RATIO may be at most 0.2; with "
                                          r"WARMUP_RATIO 0.5, WARMDOWN_RATIO at most 0.5\)"):
        validate_config(default_config() | {"WARMUP_RATIO": 0.5, "WARMDOWN_RATIO": 0.8})


@pytest.mark.parametrize("preset", PRESETS)
def test_every_batch_in_range_is_a_multiple_of_the_context(preset: str) -> None:
    smallest_batch, _ = KNOBS["TOTAL_BATCH_SIZE"].bounds(preset)
    assert smallest_batch is not None and smallest_batch % PRESET_SETTINGS[preset].context_length == 0


def test_model_width_rounds_up_to_whole_heads() -> None:
    assert model_width(default_config()) == 128
    assert model_width(default_config() | {"HEAD_DIM": 128}) == 128
    assert model_width(default_config() | {"ASPECT_RATIO": 20, "HEAD_DIM": 64}) == 128  # 80 -> 128
    assert model_width(default_config() | {"DEPTH": 1, "ASPECT_RATIO": 8, "HEAD_DIM": 32}) == 32


# --- proposals ----------------------------------------------------------------------------------


def test_apply_changes_returns_config_and_diff() -> None:
    base = default_config()
    new, diff = apply_changes(base, {"MATRIX_LR": "0.04", "TOTAL_BATCH_SIZE": "2**11"})
    assert new["MATRIX_LR"] == 0.04 and new["TOTAL_BATCH_SIZE"] == 2048
    assert diff == {
        "MATRIX_LR": {"old": base["MATRIX_LR"], "new": 0.04},
        "TOTAL_BATCH_SIZE": {"old": 4096, "new": 2048},
    }
    assert base == default_config()  # not mutated


def test_apply_changes_rejects_locked_frozen_noop_unknown_and_empty() -> None:
    base = default_config()
    with pytest.raises(ConfigError, match="DEPTH is locked"):
        apply_changes(base, {"DEPTH": 6})
    with pytest.raises(ConfigError, match="MATRIX_LR is frozen"):
        apply_changes(base, {"MATRIX_LR": 0.04}, frozen={"MATRIX_LR"})
    with pytest.raises(ConfigError, match='WINDOW_PATTERN is already "SSSL"; the change would do nothing'):
        apply_changes(base, {"WINDOW_PATTERN": "sssl"})
    with pytest.raises(ConfigError, match=r"ADAM_BETAS is already \[0\.8, 0\.95\]"):
        apply_changes(base, {"ADAM_BETAS": "[0.8, 0.95]"})
    with pytest.raises(ConfigError, match="unknown parameter 'LR'"):
        apply_changes(base, {"LR": 0.1})
    with pytest.raises(ConfigError, match="at least one parameter"):
        apply_changes(base, {})
    with pytest.raises(ConfigError) as caught:
        apply_changes(base, {"DEPTH": 6, "MATRIX_LR": "fast", "SCALAR_LR": 0.1})
    assert len(caught.value.problems) == 2


def test_apply_changes_runs_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="WARMUP_RATIO \\+ WARMDOWN_RATIO"):
        apply_changes(default_config(), {"WARMUP_RATIO": 0.5, "WARMDOWN_RATIO": 0.9})


def test_schema_module_does_not_import_torch_or_django() -> None:
    import subprocess
    import sys

    code = (
        "import sys, trainer.schema, trainer.launch, trainer.outcomes, trainer.corpus, trainer.flops, "
        "trainer.budget, trainer.surrogate;"
        "print(any(m in sys.modules for m in ('torch', 'django')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
