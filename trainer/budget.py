"""Budget validation shared by the CLI (before torch is imported), the trainer and the surrogate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trainer.flops import flops_per_step, planned_steps
from trainer.schema import ConfigError

BUDGET_KINDS = ("flops", "seconds")
# --deterministic: "auto" is deterministic kernels for FLOP budgets only (trainer.accel).
DETERMINISTIC_CHOICES = ("auto", "on", "off")


def check_budget(config: Mapping[str, Any], preset: str, budget_kind: str, budget_value: float) -> int | None:
    """Raise ConfigError for an unusable budget; return the planned steps of a FLOP budget (None for seconds)."""
    if budget_kind not in BUDGET_KINDS:
        raise ConfigError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}, got {budget_kind!r}")
    if not (isinstance(budget_value, int | float) and math.isfinite(budget_value) and budget_value > 0):
        raise ConfigError(f"budget must be a positive number, got {budget_value!r}")
    if budget_kind == "seconds":
        return None
    steps = planned_steps(config, preset, budget_value)
    if steps < 1:
        raise ConfigError(
            f"a FLOP budget of {budget_value:.3g} is less than one optimizer step "
            f"({flops_per_step(config, preset):.3g} FLOPs at TOTAL_BATCH_SIZE={config['TOTAL_BATCH_SIZE']})"
        )
    return steps
