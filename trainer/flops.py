"""Training FLOPs per token of the GPT in ``trainer.model``, computed from the config alone (no torch).

6 x (matmul parameters) + attention: the 6N term counts forward (2N) and backward (4N) of every
matmul weight (q, k, v, output projection, MLP in and out: 12 x width^2 per layer, plus the
width x vocab head); the embedding lookup is not a matmul and norm gains are negligible, so
both are excluded (as in nanochat). Attention adds, per layer, QK^T and AV: 2 matmuls x 2 FLOPs
x width x span forward, x3 with backward = 12 x width x span, where span is the layer's window
(full layers: the context length; an upper bound for causal attention, as in the PaLM/nanochat
formula). Norms, rotary and softmax are ignored. ``GPT.flops_per_token`` must agree (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.schema import PRESET_SETTINGS, model_width

VOCAB_SIZE = 256
MLP_EXPANSION = 4


def layer_windows(window_pattern: str, depth: int, preset: str) -> list[int]:
    """Attention span (in tokens, including the current one) of each layer: the pattern tiled over the layers."""
    settings = PRESET_SETTINGS[preset]
    spans = {"S": settings.short_window, "L": settings.context_length}
    return [spans[window_pattern[layer % len(window_pattern)]] for layer in range(depth)]


def flops_per_token(config: Mapping[str, Any], preset: str) -> float:
    width, depth = model_width(config), int(config["DEPTH"])
    matmul_params = depth * (4 + 2 * MLP_EXPANSION) * width * width + width * VOCAB_SIZE
    attention = sum(12 * width * span for span in layer_windows(str(config["WINDOW_PATTERN"]), depth, preset))
    return 6.0 * matmul_params + attention


def flops_per_step(config: Mapping[str, Any], preset: str) -> float:
    return flops_per_token(config, preset) * int(config["TOTAL_BATCH_SIZE"])


def planned_steps(config: Mapping[str, Any], preset: str, flops_budget: float) -> int:
    """Optimizer steps a FLOP budget buys (0 if it does not cover one step)."""
    return int(flops_budget // flops_per_step(config, preset))
