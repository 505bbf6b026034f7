"""Optimisers and the learning-rate schedule.

- Muon (momentum + Newton-Schulz orthogonalisation, Keller Jordan) for the 2-D weight matrices
  inside the blocks, at MATRIX_LR, with decoupled WEIGHT_DECAY.
- AdamW for the token embedding (EMBEDDING_LR), the output head (UNEMBEDDING_LR) and the norm
  gains (SCALAR_LR), with ADAM_BETAS and no weight decay (as in the reference).
- One schedule multiplies every group's base learning rate: linear warmup over WARMUP_RATIO of
  the budget, constant, then linear warmdown over the last WARMDOWN_RATIO to FINAL_LR_FRAC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from trainer.model import GPT

NEWTON_SCHULZ_STEPS = 5
MUON_MOMENTUM = 0.95
ADAM_EPS = 1e-10


def lr_multiplier(progress: float, warmup_ratio: float, warmdown_ratio: float, final_lr_frac: float) -> float:
    """Schedule factor at ``progress`` (fraction of the budget used, 0..1)."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_ratio > 0 and progress < warmup_ratio:
        return progress / warmup_ratio
    if warmdown_ratio > 0 and progress > 1.0 - warmdown_ratio:
        remaining = (1.0 - progress) / warmdown_ratio
        return final_lr_frac + (1.0 - final_lr_frac) * remaining
    return 1.0


@torch.no_grad()
def orthogonalize(gradient: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """Approximately replace G = U S V^T by U V^T with a quintic Newton-Schulz iteration.

    The coefficients maximise the slope at zero, so small singular values grow fast; the result
    has singular values in roughly [0.7, 1.2], which is all Muon needs. bf16 on CUDA (fast and
    good enough, per Keller Jordan), fp32 on CPU where bf16 matmuls are not reliably faster.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = gradient.bfloat16() if gradient.is_cuda else gradient.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.T
    return x.to(gradient.dtype)


@torch.no_grad()
def orthogonalize_batched(gradients: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """``orthogonalize`` of a stack (n, rows, cols) of same-shaped matrices at once: one batched
    matmul per iteration instead of one small matmul per matrix (the CUDA path)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = gradients.bfloat16() if gradients.is_cuda else gradients.float()
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(gradients.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, with Nesterov momentum and decoupled weight decay."""

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float = MUON_MOMENTUM
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            if any(param.is_cuda for param in group["params"]):
                self._step_batched(group)
                continue
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buffer: torch.Tensor = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - group["momentum"])
                nesterov = param.grad.lerp(buffer, group["momentum"])
                update = orthogonalize(nesterov)
                # Tall matrices get a larger step so every matrix moves by a similar RMS amount.
                scale = max(1.0, param.size(0) / param.size(1)) ** 0.5
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-group["lr"] * scale)

    @torch.no_grad()
    def _step_batched(self, group: dict[str, Any]) -> None:
        """The same update with same-shaped matrices stacked: a handful of batched kernels per shape
        instead of ~20 small ones per matrix (the CPU path stays per matrix, bit for bit as before)."""
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for param in group["params"]:
            if param.grad is not None:
                by_shape.setdefault(tuple(param.shape), []).append((param, param.grad))
        momentum, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
        for shape, pairs in by_shape.items():
            params = [param for param, _ in pairs]
            grads = [grad for _, grad in pairs]
            buffers = []
            for param, grad in pairs:
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffers.append(state["momentum_buffer"])
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            nesterov = torch.stack(grads).lerp_(torch.stack(buffers), momentum)
            updates = orthogonalize_batched(nesterov).unbind(0)
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            torch._foreach_mul_(params, 1 - lr * decay)
            torch._foreach_add_(params, updates, alpha=-lr * scale)


class CombinedOptimizer:
    """AdamW and Muon driven together; ``set_lr_multiplier`` applies the schedule to every group."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["base_lr"] = group["lr"]

    def set_lr_multiplier(self, multiplier: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * multiplier

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def current_lrs(self) -> dict[str, float]:
        return {group["name"]: float(group["lr"]) for optimizer in self.optimizers for group in optimizer.param_groups}


def build_optimizer(model: GPT, config: Mapping[str, Any]) -> CombinedOptimizer:
    matrix_params = [p for block in model.blocks for p in block.parameters() if p.ndim == 2]
    scalar_params = [p for p in model.parameters() if p.ndim < 2]
    embedding_params = [model.wte.weight]
    head_params = [model.lm_head.weight]
    grouped = {id(p) for p in matrix_params + scalar_params + embedding_params + head_params}
    if len(grouped) != len(list(model.parameters())):
        raise RuntimeError("every parameter must belong to exactly one optimizer group")
    adamw = torch.optim.AdamW(
        [
            {"params": embedding_params, "lr": config["EMBEDDING_LR"], "name": "embedding"},
            {"params": head_params, "lr": config["UNEMBEDDING_LR"], "name": "unembedding"},
            {"params": scalar_params, "lr": config["SCALAR_LR"], "name": "scalar"},
        ],
        betas=tuple(config["ADAM_BETAS"]),
        eps=ADAM_EPS,
        weight_decay=0.0,
        # One fused kernel for all AdamW parameters on CUDA; the CPU default stays (same numbers as before).
        fused=True if model.lm_head.weight.is_cuda else None,
    )
    muon = Muon(matrix_params, lr=config["MATRIX_LR"], weight_decay=config["WEIGHT_DECAY"])
    muon.param_groups[0]["name"] = "matrix"
    return CombinedOptimizer([adamw, muon])
