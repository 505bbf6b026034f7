"""How the real trainer's seed noise splits into a part shared by all configs of a seed and a part of its own.

The same seed gives the real trainer the same initialisation and the same data order, so two nearby
configs trained with one seed share most of their luck; a change that does not change the maths
(DEVICE_BATCH_SIZE, a window pattern that tiles to the same layers) gives the identical value. The
surrogate mimics that with two Gaussian components:

    val_bpb(config, seed) = mean(config) + seed_sd * z(seed) + config_sd * z(maths of config, seed)

Both sds are estimated from real runs laid out as a configs x seeds table (every config on the same
seeds, ``trainer/data/noise_split_measurements.json`` plus the default's replicates): a two-way
random-effects analysis of variance without replication. The residual mean square estimates
config_sd^2 (chi-square interval); the seed mean square estimates config_sd^2 + C seed_sd^2, so the
ratio of the two gives an F interval for the seed-shared fraction of the variance.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.flops import layer_windows
from trainer.schema import config_to_json

SPLIT_MEASUREMENTS_PATH = Path(__file__).resolve().parent / "data" / "noise_split_measurements.json"
# Knobs that change speed or memory but not a single number of the computation (see the schema).
MATHS_FREE_KNOBS = ("DEVICE_BATCH_SIZE",)
LEVEL = 0.95


def maths_key(config: Mapping[str, Any], preset: str) -> str:
    """What the computation depends on: no speed-only knobs, the window pattern as the per-layer windows."""
    maths = {name: value for name, value in config_to_json(dict(config)).items() if name not in MATHS_FREE_KNOBS}
    maths["WINDOW_PATTERN"] = layer_windows(str(config["WINDOW_PATTERN"]), int(config["DEPTH"]), preset)
    return json.dumps(maths, sort_keys=True)


def _generator(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def seed_generator(seed: int) -> np.random.Generator:
    """The draw every config trained with ``seed`` shares."""
    return _generator(json.dumps({"seed": seed}))


def config_generator(config: Mapping[str, Any], seed: int, preset: str) -> np.random.Generator:
    """The (maths, seed) pair's own draws: equal for configs that compute the same thing."""
    return _generator(json.dumps({"maths": maths_key(config, preset), "seed": seed}))


@dataclass(frozen=True)
class NoiseSplit:
    """Seed-shared and config-specific noise, with 95% intervals, from a configs x seeds table."""

    seed_sd: float
    config_sd: float
    configs: int
    seeds: int
    seed_share: float  # seed_sd^2 / (seed_sd^2 + config_sd^2)
    seed_share_interval: tuple[float, float]
    config_sd_interval: tuple[float, float]

    @property
    def total_sd(self) -> float:
        return math.hypot(self.seed_sd, self.config_sd)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_sd": self.total_sd}


def estimate_split(table: np.ndarray) -> NoiseSplit:
    """Two-way random-effects ANOVA without replication; ``table[c, s]`` is config c trained with seed s."""
    from scipy import stats  # the fit only; evaluating the surrogate needs numpy alone

    configs, seeds = table.shape
    if configs < 2 or seeds < 2:
        raise ValueError(f"a noise split needs at least 2 configs x 2 seeds, got {configs} x {seeds}")
    grand = table.mean()
    seed_means = table.mean(axis=0)
    residual = table - table.mean(axis=1, keepdims=True) - seed_means[None, :] + grand
    seed_df, residual_df = seeds - 1, (configs - 1) * (seeds - 1)
    ms_seed = configs * float(((seed_means - grand) ** 2).sum()) / seed_df
    ms_residual = float((residual**2).sum()) / residual_df
    config_var = ms_residual
    seed_var = max(0.0, (ms_seed - ms_residual) / configs)
    alpha = (1 - LEVEL) / 2
    chi_low, chi_high = stats.chi2.ppf([1 - alpha, alpha], residual_df)
    # ms_seed / ms_residual ~ (1 + C theta) F(seed_df, residual_df) with theta = seed_var / config_var.
    ratio = ms_seed / ms_residual if ms_residual > 0 else math.inf
    f_high, f_low = stats.f.ppf([1 - alpha, alpha], seed_df, residual_df)
    theta_low = max(0.0, float(ratio / f_high - 1) / configs)
    theta_high = max(0.0, float(ratio / f_low - 1) / configs)
    return NoiseSplit(
        seed_sd=math.sqrt(seed_var),
        config_sd=math.sqrt(config_var),
        configs=configs,
        seeds=seeds,
        seed_share=seed_var / (seed_var + config_var) if seed_var + config_var > 0 else 0.0,
        seed_share_interval=(theta_low / (1 + theta_low), theta_high / (1 + theta_high)),
        config_sd_interval=(
            math.sqrt(residual_df * ms_residual / float(chi_low)),
            math.sqrt(residual_df * ms_residual / float(chi_high)),
        ),
    )


def split_table(records: list[dict[str, Any]]) -> np.ndarray:
    """The largest balanced block of ok runs: every config on the seeds that all configs were trained with."""
    by_config: dict[str, dict[int, float]] = {}
    for record in records:
        if record["failure_class"] == "ok":
            key = json.dumps(record["config"], sort_keys=True)
            by_config.setdefault(key, {})[int(record["seed"])] = record["val_bpb"]
    common = sorted(set.intersection(*(set(values) for values in by_config.values())))
    return np.array([[values[seed] for seed in common] for values in by_config.values()])


def load_split_records(
    default_replicates: list[dict[str, Any]], path: Path = SPLIT_MEASUREMENTS_PATH
) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"noise split measurements not found at {path}; run bench/trainer_noise_split.py")
    records: list[dict[str, Any]] = json.loads(path.read_text())["measurements"]
    return default_replicates + records
