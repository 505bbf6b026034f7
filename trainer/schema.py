"""The search-space schema: the single source of truth for every trainer knob.

Used by the trainer, the search engine, LLM prompts and the UI. Values that come from an LLM
or a form go through :func:`coerce_value` / :func:`apply_changes`; they are parsed, never
evaluated, and every problem is reported with a precise message.

Knob types:

- ``int``: an integer in [min, max].
- ``float``: a finite number in [min, max]; ``log`` says the search should move it
  multiplicatively.
- ``pow2``: a power of two in [min, max]; accepts ``4096`` or the string ``"2**12"``.
- ``enum``: one of ``choices``.
- ``tuple``: a fixed-length list of floats, each strictly inside (min, max); accepts a list or
  a JSON list string such as ``"[0.8, 0.95]"``.
- ``pattern``: a string over the alphabet ``choices`` whose length is in [min, max]
  (``WINDOW_PATTERN``: ``S`` = short sliding window, ``L`` = full context).

Ranges are per preset (a GPU run uses batches that would never fit the CPU budget), so the
functions take ``preset=`` with ``"cpu-tiny"`` as the default.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PRESETS = ("cpu-tiny", "gpu")
DEFAULT_PRESET = "cpu-tiny"


class ConfigError(ValueError):
    """A configuration (or a proposed change) violates the schema. The message says exactly why."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class PresetSettings:
    """Fixed (non-searchable) facts of a preset: sequence length, attention windows, evaluation range."""

    name: str
    context_length: int
    short_window: int  # attention span of an "S" layer, in tokens (bytes)
    val_bytes: int  # size of the fixed validation byte range
    default_flops_budget: float
    default_seconds_budget: float


PRESET_SETTINGS: dict[str, PresetSettings] = {
    "cpu-tiny": PresetSettings(
        name="cpu-tiny",
        context_length=256,
        short_window=64,
        val_bytes=131_072,
        default_flops_budget=1.5e12,
        default_seconds_budget=30.0,
    ),
    "gpu": PresetSettings(
        name="gpu",
        context_length=2048,
        short_window=1024,
        val_bytes=262_144,
        default_flops_budget=1e17,
        default_seconds_budget=300.0,
    ),
}


@dataclass(frozen=True)
class Knob:
    """One tunable parameter. ``min``/``max`` are the cpu-tiny bounds; ``preset_bounds`` overrides them per preset."""

    name: str
    type: str
    description: str
    defaults: Mapping[str, Any]
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    log: bool = False
    locked: bool = False
    length: int | None = None  # for tuples
    preset_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def bounds(self, preset: str = DEFAULT_PRESET) -> tuple[float | None, float | None]:
        if preset in self.preset_bounds:
            return self.preset_bounds[preset]
        return self.min, self.max

    def default(self, preset: str = DEFAULT_PRESET) -> Any:
        return self.defaults[_check_preset(preset)]

    def to_json(self, preset: str = DEFAULT_PRESET) -> dict[str, Any]:
        lo, hi = self.bounds(preset)
        default = self.default(preset)
        return {
            "name": self.name,
            "type": self.type,
            "min": lo,
            "max": hi,
            "choices": list(self.choices) if self.choices is not None else None,
            "log": self.log,
            "locked": self.locked,
            "description": self.description,
            "default": list(default) if isinstance(default, tuple) else default,
        }


def _knobs(*knobs: Knob) -> dict[str, Knob]:
    return {knob.name: knob for knob in knobs}


KNOBS: dict[str, Knob] = _knobs(
    Knob(
        "DEPTH",
        "int",
        "number of transformer layers (locked, as in the paper)",
        defaults={"cpu-tiny": 4, "gpu": 8},
        min=1,
        max=32,
        locked=True,
    ),
    Knob(
        "ASPECT_RATIO",
        "int",
        "model width = DEPTH x ASPECT_RATIO, rounded up to a multiple of HEAD_DIM (locked)",
        defaults={"cpu-tiny": 32, "gpu": 64},
        min=8,
        max=128,
        locked=True,
    ),
    Knob(
        "HEAD_DIM",
        "pow2",
        "width of one attention head; heads = model width / HEAD_DIM",
        defaults={"cpu-tiny": 32, "gpu": 128},
        min=16,
        max=128,
        log=True,
        preset_bounds={"gpu": (32, 256)},
    ),
    Knob(
        "WINDOW_PATTERN",
        "pattern",
        "per-layer attention span, tiled over the layers: S = short sliding window (a quarter of the context "
        "on cpu-tiny), L = full context",
        defaults={"cpu-tiny": "SSSL", "gpu": "SSSL"},
        min=1,
        max=8,
        choices=("S", "L"),
    ),
    Knob(
        "TOTAL_BATCH_SIZE",
        "pow2",
        "tokens per optimizer step (smaller = more, noisier steps for the same budget)",
        defaults={"cpu-tiny": 2**12, "gpu": 2**19},
        min=2**10,
        max=2**16,
        log=True,
        preset_bounds={"gpu": (2**15, 2**21)},
    ),
    Knob(
        "DEVICE_BATCH_SIZE",
        "pow2",
        "sequences per forward/backward micro-batch, capped at TOTAL_BATCH_SIZE / context; gradient accumulation "
        "makes up the rest (changes speed and memory, not the maths)",
        defaults={"cpu-tiny": 16, "gpu": 64},
        min=1,
        max=256,
        log=True,
    ),
    Knob(
        "EMBEDDING_LR",
        "float",
        "AdamW learning rate of the token embedding",
        defaults={"cpu-tiny": 0.6, "gpu": 0.6},
        min=1e-3,
        max=5.0,
        log=True,
    ),
    Knob(
        "UNEMBEDDING_LR",
        "float",
        "AdamW learning rate of the output head (logits)",
        defaults={"cpu-tiny": 0.004, "gpu": 0.004},
        min=1e-4,
        max=0.5,
        log=True,
    ),
    Knob(
        "MATRIX_LR",
        "float",
        "Muon learning rate of the 2-D weight matrices in attention and MLP",
        defaults={"cpu-tiny": 0.01, "gpu": 0.04},
        min=1e-3,
        max=1.0,
        log=True,
    ),
    Knob(
        "SCALAR_LR",
        "float",
        "AdamW learning rate of scalar and vector parameters (norm gains)",
        defaults={"cpu-tiny": 0.5, "gpu": 0.5},
        min=1e-3,
        max=5.0,
        log=True,
    ),
    Knob(
        "WEIGHT_DECAY",
        "float",
        "decoupled weight decay of the Muon matrices (multiplied by the learning rate)",
        defaults={"cpu-tiny": 0.0, "gpu": 0.2},
        min=0.0,
        max=1.0,
    ),
    Knob(
        "ADAM_BETAS",
        "tuple",
        "AdamW (beta1, beta2), each strictly between 0 and 1",
        defaults={"cpu-tiny": (0.8, 0.95), "gpu": (0.8, 0.95)},
        min=0.0,
        max=1.0,
        length=2,
    ),
    Knob(
        "WARMUP_RATIO",
        "float",
        "fraction of the budget spent ramping learning rates up linearly from 0",
        defaults={"cpu-tiny": 0.0, "gpu": 0.0},
        min=0.0,
        max=0.5,
    ),
    Knob(
        "WARMDOWN_RATIO",
        "float",
        "fraction of the budget at the end spent decaying learning rates linearly",
        defaults={"cpu-tiny": 0.5, "gpu": 0.5},
        min=0.0,
        max=1.0,
    ),
    Knob(
        "FINAL_LR_FRAC",
        "float",
        "learning rate at the end of warmdown, as a fraction of the peak",
        defaults={"cpu-tiny": 0.0, "gpu": 0.0},
        min=0.0,
        max=1.0,
    ),
)


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return preset


def _knob(name: Any) -> Knob:
    if not isinstance(name, str) or name not in KNOBS:
        raise ConfigError(f"unknown parameter {name!r}")
    return KNOBS[name]


_INT_TEXT = re.compile(r"^[+-]?\d+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_POW2_TEXT = re.compile(r"^2\s*\*\*\s*(\d+)$")


def _as_number(value: Any) -> float | None:
    """A finite real number from an int, float or numeric string; ``None`` if it is not one. Never evaluates."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        number = float(value.strip())
    else:
        return None
    return number if math.isfinite(number) else None


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _format_pow2(value: float) -> str:
    if value <= 0:
        return _format_number(value)
    return f"2**{math.log2(value):.4g}"


def _coerce_int(knob: Knob, value: Any, preset: str) -> int:
    if isinstance(value, str) and _INT_TEXT.match(value.strip()):
        number: float | None = float(int(value.strip()))
    else:
        number = _as_number(value)
    if number is None or not number.is_integer():
        raise ConfigError(f"{knob.name} must be an integer, got {value!r}")
    lo, hi = knob.bounds(preset)
    if lo is not None and hi is not None and not lo <= number <= hi:
        raise ConfigError(
            f"{knob.name} must be an integer between {_format_number(lo)} and {_format_number(hi)}, "
            f"got {_format_number(number)}"
        )
    return int(number)


def _coerce_float(knob: Knob, value: Any, preset: str) -> float:
    number = _as_number(value)
    if number is None:
        raise ConfigError(f"{knob.name} must be a number, got {value!r}")
    lo, hi = knob.bounds(preset)
    if lo is not None and hi is not None and not lo <= number <= hi:
        raise ConfigError(f"{knob.name} must be between {lo:g} and {hi:g}, got {number:g}")
    return number


def _coerce_pow2(knob: Knob, value: Any, preset: str) -> int:
    lo, hi = knob.bounds(preset)
    assert lo is not None and hi is not None
    expected = f"a power of two between {_format_pow2(lo)} and {_format_pow2(hi)}"
    if isinstance(value, str) and (match := _POW2_TEXT.match(value.strip())):
        exponent = int(match.group(1))
        if exponent > 62:
            raise ConfigError(f"{knob.name} must be {expected}, got {value.strip()}")
        number: float | None = float(2**exponent)
    else:
        number = _as_number(value)
    if number is None:
        raise ConfigError(f"{knob.name} must be {expected}, got {value!r}")
    is_pow2 = number >= 1 and number.is_integer() and (int(number) & (int(number) - 1)) == 0
    if not is_pow2 or not lo <= number <= hi:
        raise ConfigError(f"{knob.name} must be {expected}, got {_format_pow2(number)}")
    return int(number)


def _coerce_enum(knob: Knob, value: Any) -> Any:
    assert knob.choices is not None
    if isinstance(value, bool) or value not in knob.choices:
        options = ", ".join(repr(choice) for choice in knob.choices)
        raise ConfigError(f"{knob.name} must be one of {options}, got {value!r}")
    return value


def _coerce_tuple(knob: Knob, value: Any) -> tuple[float, ...]:
    lo, hi = knob.min, knob.max
    described = f"a list of {knob.length} numbers, each strictly between {lo:g} and {hi:g}"
    items: Any = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("(") and text.endswith(")"):
            text = "[" + text[1:-1] + "]"
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"{knob.name} must be {described}, got {value!r}") from None
    if not isinstance(items, list | tuple) or len(items) != knob.length:
        raise ConfigError(f"{knob.name} must be {described}, got {value!r}")
    numbers = [_as_number(item) for item in items]
    if any(number is None for number in numbers):
        raise ConfigError(f"{knob.name} must be {described}, got {value!r}")
    checked = tuple(float(number) for number in numbers if number is not None)
    assert lo is not None and hi is not None
    for index, number in enumerate(checked):
        if not lo < number < hi:
            raise ConfigError(f"{knob.name}[{index}] must be strictly between {lo:g} and {hi:g}, got {number:g}")
    return checked


def _coerce_pattern(knob: Knob, value: Any) -> str:
    assert knob.choices is not None and knob.min is not None and knob.max is not None
    alphabet = "".join(knob.choices)
    if not isinstance(value, str):
        raise ConfigError(f"{knob.name} must be a string of the characters {alphabet}, got {value!r}")
    pattern = value.strip().upper()
    bad = sorted({char for char in pattern if char not in knob.choices})
    if bad:
        raise ConfigError(
            f"{knob.name} may only contain the characters {alphabet}, got {value!r} (invalid: {''.join(bad)!r})"
        )
    if not knob.min <= len(pattern) <= knob.max:
        raise ConfigError(
            f"{knob.name} must have {int(knob.min)} to {int(knob.max)} characters, got {len(pattern)} ({value!r})"
        )
    return pattern


def coerce_knob(knob: Knob, value: Any, *, preset: str = DEFAULT_PRESET) -> Any:
    """Parse and range-check ``value`` for ``knob``; raises :class:`ConfigError`."""
    if knob.type == "int":
        return _coerce_int(knob, value, preset)
    if knob.type == "float":
        return _coerce_float(knob, value, preset)
    if knob.type == "pow2":
        return _coerce_pow2(knob, value, preset)
    if knob.type == "enum":
        return _coerce_enum(knob, value)
    if knob.type == "tuple":
        return _coerce_tuple(knob, value)
    if knob.type == "pattern":
        return _coerce_pattern(knob, value)
    raise ConfigError(f"{knob.name} has an unsupported type {knob.type!r}")


def coerce_value(name: str, value: Any, *, preset: str = DEFAULT_PRESET) -> Any:
    """The typed value of knob ``name`` parsed from ``value`` (an LLM reply, a form field, JSON)."""
    return coerce_knob(_knob(name), value, preset=_check_preset(preset))


def default_config(preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """Every knob at its default for ``preset``."""
    _check_preset(preset)
    return {name: knob.default(preset) for name, knob in KNOBS.items()}


def model_width(config: Mapping[str, Any]) -> int:
    """DEPTH x ASPECT_RATIO rounded up to a multiple of HEAD_DIM (so it always holds a whole number of heads)."""
    head_dim = int(config["HEAD_DIM"])
    raw = int(config["DEPTH"]) * int(config["ASPECT_RATIO"])
    return max(head_dim, -(-raw // head_dim) * head_dim)


def cross_field_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems between knobs of a complete typed config (each knob alone is already valid)."""
    # TOTAL_BATCH_SIZE needs no check against the context: every power of two in a preset's range
    # is a multiple of its context length (a test guards this), and DEVICE_BATCH_SIZE is capped at
    # TOTAL_BATCH_SIZE / context by the trainer.
    problems = []
    if len(config["WINDOW_PATTERN"]) > config["DEPTH"]:
        problems.append(
            f"WINDOW_PATTERN {config['WINDOW_PATTERN']!r} has {len(config['WINDOW_PATTERN'])} characters but "
            f"DEPTH is {config['DEPTH']}; characters beyond the last layer would have no effect"
        )
    if config["WARMUP_RATIO"] + config["WARMDOWN_RATIO"] > 1.0:
        up, down = config["WARMUP_RATIO"], config["WARMDOWN_RATIO"]
        # The bound each one has beside the other: a small model told only the sum sent the same pair 3 times.
        problems.append(
            f"WARMUP_RATIO + WARMDOWN_RATIO must be at most 1, got {up:g} + {down:g} (with WARMDOWN_RATIO "
            f"{down:g}, WARMUP_RATIO may be at most {1 - down:.3g}; with WARMUP_RATIO {up:g}, WARMDOWN_RATIO "
            f"at most {1 - up:.3g})"
        )
    return problems


def validate_config(config: Mapping[str, Any], *, preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """A complete, typed copy of ``config``; raises :class:`ConfigError` listing every problem found."""
    _check_preset(preset)
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a JSON object, got {type(config).__name__}")
    problems: list[str] = []
    typed: dict[str, Any] = {}
    for name in config:
        if name not in KNOBS:
            problems.append(f"unknown parameter {name!r}")
    for name, knob in KNOBS.items():
        if name not in config:
            problems.append(f"missing parameter {name!r}")
            continue
        try:
            typed[name] = coerce_knob(knob, config[name], preset=preset)
        except ConfigError as error:
            problems.extend(error.problems)
    if not problems:
        problems.extend(cross_field_problems(typed))
    if problems:
        raise ConfigError(problems)
    return typed


def apply_changes(
    base: Mapping[str, Any],
    changes: Mapping[str, Any],
    *,
    frozen: Iterable[str] = (),
    preset: str = DEFAULT_PRESET,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Apply a proposal to ``base``.

    Returns the new full validated config and ``{"NAME": {"old": x, "new": y}}``. Rejects unknown,
    locked and frozen knobs, values that do not change anything, and configs that fail validation.
    """
    current = validate_config(base, preset=preset)
    if not isinstance(changes, Mapping) or not changes:
        raise ConfigError("a proposal must change at least one parameter")
    frozen_names = set(frozen)
    problems: list[str] = []
    updated = dict(current)
    diff: dict[str, dict[str, Any]] = {}
    for name, raw in changes.items():
        try:
            knob = _knob(name)
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        if knob.locked:
            problems.append(f"{name} is locked and cannot be changed")
            continue
        if name in frozen_names:
            problems.append(f"{name} is frozen for now and cannot be changed")
            continue
        try:
            value = coerce_knob(knob, raw, preset=preset)
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        if value == current[name]:
            problems.append(f"{name} is already {_display(current[name])}; the change would do nothing")
            continue
        updated[name] = value
        diff[name] = {"old": current[name], "new": value}
    if not problems:
        problems.extend(cross_field_problems(updated))
    if problems:
        raise ConfigError(problems)
    return updated, diff


def _display(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def schema_json(preset: str = DEFAULT_PRESET) -> list[dict[str, Any]]:
    """Every knob as a JSON-able dict (for prompts and the UI), in a stable order."""
    _check_preset(preset)
    return [knob.to_json(preset) for knob in KNOBS.values()]


def config_to_json(config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-serialisable copy of a typed config (tuples become lists)."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in config.items()}
