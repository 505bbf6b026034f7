"""Tuned starts: per preset, the best config known that real trainings confirm (``data/tuned_starts.json``).

The paper's runs start from a tuned config, where gains are small; starting every run of an
experiment from the tuned start instead of the schema defaults makes a method find something only
if it is good. An entry says which real measurements back it (seeds, val_bpb per seed, the FLOP
budget), so a reader can check the claim; it is data, replaced when a better-confirmed config is
known. Format::

    {"cpu-tiny": {"config": {...}, "real_val_bpb": [..one per seed..], "seeds": [...],
                  "budget_flops": 1.5e12, "source": "which measurements, and why this one"}}

Optional per entry: ``threads`` (torch threads of the measurements) and ``default_real_val_bpb``
(the default config on the same seeds, for the gain). No Django here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainer.schema import PRESETS, ConfigError, config_to_json, validate_config

TUNED_STARTS_PATH = Path(__file__).resolve().parent / "data" / "tuned_starts.json"
REQUIRED_KEYS = ("config", "real_val_bpb", "seeds", "budget_flops", "source")
OPTIONAL_KEYS = ("threads", "default_real_val_bpb")


class TunedStartError(ValueError):
    """The tuned-starts file is malformed; the message says where."""


@dataclass(frozen=True)
class TunedStart:
    preset: str
    config: dict[str, Any]
    real_val_bpb: tuple[float, ...]
    seeds: tuple[int, ...]
    budget_flops: float
    source: str
    threads: int | None = None
    default_real_val_bpb: tuple[float, ...] = ()

    @property
    def mean_real_val_bpb(self) -> float:
        return sum(self.real_val_bpb) / len(self.real_val_bpb)

    @property
    def mean_gain_over_default(self) -> float | None:
        """Mean of (tuned − default) over the seeds both were trained on; None when not recorded."""
        if not self.default_real_val_bpb:
            return None
        pairs = list(zip(self.real_val_bpb, self.default_real_val_bpb, strict=True))
        return sum(tuned - default for tuned, default in pairs) / len(pairs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "config": self.config,
            "real_val_bpb": list(self.real_val_bpb),
            "mean_real_val_bpb": self.mean_real_val_bpb,
            "seeds": list(self.seeds),
            "budget_flops": self.budget_flops,
            "threads": self.threads,
            "default_real_val_bpb": list(self.default_real_val_bpb),
            "mean_gain_over_default": self.mean_gain_over_default,
            "source": self.source,
        }


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TunedStartError(f"{where} must be a finite number, got {json.dumps(value)[:40]}")
    return float(value)


def _numbers(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise TunedStartError(f"{where} must be a list of numbers")
    return tuple(_finite(item, f"{where}[{i}]") for i, item in enumerate(value))


def parse_entry(preset: str, entry: Any) -> TunedStart:
    where = f"tuned start {preset!r}"
    if preset not in PRESETS:
        raise TunedStartError(f"{where}: unknown preset (known: {', '.join(PRESETS)})")
    if not isinstance(entry, Mapping):
        raise TunedStartError(f"{where} must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        raise TunedStartError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    try:
        config = config_to_json(validate_config(entry["config"], preset=preset))
    except ConfigError as error:
        raise TunedStartError(f"{where}: invalid config: {error}") from error
    values = _numbers(entry["real_val_bpb"], f"{where}.real_val_bpb")
    seeds = entry["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise TunedStartError(f"{where}.seeds must be a list of integers")
    if not values or len(values) != len(seeds) or len(set(seeds)) != len(seeds):
        raise TunedStartError(f"{where}: real_val_bpb and seeds need one value per distinct seed (at least one)")
    defaults = _numbers(entry.get("default_real_val_bpb", []), f"{where}.default_real_val_bpb")
    if defaults and len(defaults) != len(values):
        raise TunedStartError(f"{where}.default_real_val_bpb needs one value per seed, like real_val_bpb")
    budget = _finite(entry["budget_flops"], f"{where}.budget_flops")
    threads = entry.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise TunedStartError(f"{where}.threads must be a positive integer")
    source = entry["source"]
    if budget <= 0 or not isinstance(source, str) or not source.strip():
        raise TunedStartError(f"{where} needs a positive budget_flops and a source that says where it comes from")
    return TunedStart(preset, config, values, tuple(seeds), budget, source, threads, defaults)


def load_tuned_starts(path: Path | str = TUNED_STARTS_PATH) -> dict[str, TunedStart]:
    """Every preset's tuned start in the file, validated completely (raises TunedStartError)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TunedStartError(f"cannot read tuned starts from {path}: {error}") from error
    if not isinstance(data, Mapping):
        raise TunedStartError(f"{path} must hold a JSON object keyed by preset")
    return {preset: parse_entry(preset, entry) for preset, entry in data.items()}


@lru_cache(maxsize=1)
def _shipped() -> dict[str, TunedStart]:
    return load_tuned_starts()


def tuned_start(preset: str) -> TunedStart | None:
    """The shipped tuned start of ``preset``, or None where none is known yet."""
    return _shipped().get(preset)
