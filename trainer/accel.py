"""The CUDA path: backend settings, determinism, FlexAttention and ``torch.compile``.

On CPU every function here leaves the trainer exactly as it was (same kernels, same numbers).
On CUDA:
- TF32 for float32 matmuls outside autocast; bf16 autocast for the model (``autocast_context``).
- Sliding-window and causal layers use FlexAttention block masks (``GPT.use_flex_attention``):
  a short window costs its band, and no dense (T, T) mask is built.
- The loss (forward and backward) is compiled with ``torch.compile``; ``warm_up`` compiles it
  before the budget's clock starts, and the trainer reports the seconds it took. Each training is
  its own process, so the compiled code is rebuilt per training, from Inductor's on-disk cache
  (``TORCHINDUCTOR_CACHE_DIR``, by default under /tmp) after the first one with the same shapes.
- Deterministic mode (the default for FLOP budgets, whose promise is same seed -> same val_bpb):
  ``torch.use_deterministic_algorithms`` and deterministic cuDNN; attention backward runs in
  FlexAttention's kernels rather than cuDNN's (which accumulate in a varying order). Seconds
  budgets are noisy anyway and run without it.

``BILEVEL_TRAINER_COMPILE=0`` turns compilation off (FlexAttention stays compiled: eager, it is
the unfused reference implementation).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from trainer.budget import DETERMINISTIC_CHOICES
from trainer.model import GPT

COMPILE_ENV = "BILEVEL_TRAINER_COMPILE"

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def select_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_context(device: torch.device) -> Any:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def wants_determinism(choice: str, budget_kind: str) -> bool:
    """``auto``: deterministic for FLOP budgets (reproducible by promise), not for seconds budgets."""
    if choice not in DETERMINISTIC_CHOICES:
        raise ValueError(f"deterministic must be one of {', '.join(DETERMINISTIC_CHOICES)}, got {choice!r}")
    return budget_kind == "flops" if choice == "auto" else choice == "on"


def configure_backends(device: torch.device, *, deterministic: bool) -> None:
    """Process-wide CUDA settings; nothing on CPU, whose kernels are deterministic at a fixed thread
    count already (and where the determinism switch would import torch._inductor, ~1.5 s)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False


def compile_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(COMPILE_ENV, "1").strip() != "0"


def training_loss(model: GPT, device: torch.device) -> LossFunction:
    """The function the loop calls for a micro-batch's loss: compiled, with FlexAttention, on CUDA."""
    if device.type != "cuda":
        return model.loss
    model.use_flex_attention(device, compiled=True)
    if compile_enabled(device):
        compiled: LossFunction = torch.compile(model.loss, dynamic=False)
        return compiled
    return model.loss


def warm_up(loss: LossFunction, micro_batch: int, context: int, device: torch.device) -> None:
    """One forward and backward on a dummy batch, so compilation happens before the budget starts.

    The caller discards the gradients; no random numbers are drawn, so the run is unchanged.
    """
    inputs = torch.zeros((micro_batch, context), dtype=torch.long, device=device)
    with autocast_context(device):
        value = loss(inputs, inputs)
    value.backward()
    torch.cuda.synchronize(device)
