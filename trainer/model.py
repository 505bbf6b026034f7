"""A small GPT, readable top to bottom (after Karpathy's autoresearch/nanochat ``train.py``).

token embedding -> RMSNorm -> DEPTH x [attention with rotary positions and a per-layer window,
ReLU^2 MLP] -> RMSNorm -> untied output head -> soft-capped logits.

Choices and why:
- Untied head: the embedding and the head get their own learning rates (EMBEDDING_LR,
  UNEMBEDDING_LR), as in the reference; tying would make those two knobs fight.
- The head and the residual output projections start at zero, so an untrained model predicts
  the uniform distribution (val_bpb exactly 8 for bytes) and every run starts from the same loss.
- QK-norm and a logit soft-cap keep short, aggressive CPU runs from blowing up on the first steps.
- RMSNorm gains are learnable vectors; they and nothing else form the "scalar" AdamW group.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SOFTCAP = 15.0
ROTARY_BASE = 10_000.0
MLP_EXPANSION = 4


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context_length: int
    depth: int
    width: int
    head_dim: int
    window_pattern: str  # tiled over the layers
    short_window: int

    @property
    def num_heads(self) -> int:
        return self.width // self.head_dim

    def layer_windows(self) -> list[int]:
        """Attention span (in tokens, including the current one) of each layer."""
        spans = {"S": self.short_window, "L": self.context_length}
        return [spans[self.window_pattern[layer % len(self.window_pattern)]] for layer in range(self.depth)]


class RMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.gain)


def rotary_tables(context_length: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (1, 1, T, head_dim/2) for rotary position embeddings."""
    inverse_frequency = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(context_length, dtype=torch.float32), inverse_frequency)
    return angles.cos()[None, None], angles.sin()[None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def sliding_window_mask(context_length: int, window: int) -> torch.Tensor:
    """Boolean (T, T) mask: position i may attend to j when i - window < j <= i."""
    positions = torch.arange(context_length)
    distance = positions[:, None] - positions[None, :]
    return (distance >= 0) & (distance < window)


def sliding_window_block_mask(context_length: int, window: int, device: torch.device) -> Any:
    """FlexAttention's block-sparse form of ``sliding_window_mask`` (a full window is plain causal):
    only the blocks on the band are computed, and no (T, T) mask is ever materialised."""
    from torch.nn.attention.flex_attention import create_block_mask

    def in_window(batch: Any, head: Any, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return (query >= key) & (query - key < window)

    return create_block_mask(in_window, None, None, context_length, context_length, device=str(device))


@functools.cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """FlexAttention is only fast compiled (eager, it materialises the scores); compiled once per process."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, window: int) -> None:
        super().__init__()
        self.window = window
        self.context_length = config.context_length
        # Set by GPT.use_flex_attention (the CUDA path): used for full-length sequences only.
        self.block_mask: Any = None
        self.flex_attention: Callable[..., torch.Tensor] | None = None
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.c_q = nn.Linear(config.width, config.width, bias=False)
        self.c_k = nn.Linear(config.width, config.width, bias=False)
        self.c_v = nn.Linear(config.width, config.width, bias=False)
        self.c_proj = nn.Linear(config.width, config.width, bias=False)
        # A full-context layer uses is_causal (the fast kernel); a short one needs an explicit band mask.
        self.window_mask: torch.Tensor | None
        mask = None if window >= config.context_length else sliding_window_mask(config.context_length, window)
        self.register_buffer("window_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q = self.c_q(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(F.rms_norm(q, (self.head_dim,)), cos, sin)
        k = apply_rotary(F.rms_norm(k, (self.head_dim,)), cos, sin)
        if self.flex_attention is not None and length == self.context_length:
            # Autocast leaves the normed q, k in float32 while v is bf16; FlexAttention needs one dtype.
            y = self.flex_attention(q.to(v.dtype), k.to(v.dtype), v, block_mask=self.block_mask)
        elif self.window_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.window_mask[:length, :length])
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, MLP_EXPANSION * width, bias=False)
        self.c_proj = nn.Linear(MLP_EXPANSION * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, window: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.width)
        self.attn = CausalSelfAttention(config, window)
        self.mlp_norm = RMSNorm(config.width)
        self.mlp = MLP(config.width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.width)
        self.embed_norm = RMSNorm(config.width)
        self.blocks = nn.ModuleList(Block(config, window) for window in config.layer_windows())
        self.final_norm = RMSNorm(config.width)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.context_length, config.head_dim)
        self.rotary_cos: torch.Tensor
        self.rotary_sin: torch.Tensor
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.wte.weight, std=1.0)
        for block in self.blocks:
            assert isinstance(block, Block)
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                # Uniform with the variance of N(0, 1/fan_in): unit-scale activations at any width.
                bound = math.sqrt(3.0 / linear.in_features)
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        nn.init.zeros_(self.lm_head.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Soft-capped float32 logits of shape (B, T, vocab)."""
        length = idx.size(1)
        cos, sin = self.rotary_cos[:, :, :length], self.rotary_sin[:, :, :length]
        x = self.embed_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.final_norm(x)).float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self.forward(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    def use_flex_attention(self, device: torch.device, *, compiled: bool) -> None:
        """Attend with FlexAttention block masks (one per distinct window) for full-length sequences.

        The CUDA path: a sliding window then costs its band, not the whole (T, T) square. Shorter
        sequences (the last evaluation chunk) keep the SDPA path. ``compiled=False`` (the eager,
        unfused reference) exists for CPU tests of the masks.
        """
        from torch.nn.attention.flex_attention import flex_attention

        kernel = compiled_flex_attention() if compiled else cast(Callable[..., torch.Tensor], flex_attention)
        masks: dict[int, Any] = {}
        for block in self.blocks:
            assert isinstance(block, Block)
            window = block.attn.window
            if window not in masks:
                masks[window] = sliding_window_block_mask(self.config.context_length, window, device)
            block.attn.block_mask = masks[window]
            block.attn.flex_attention = kernel

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token, counted from the actual parameters (formula: ``trainer.flops``)."""
        matmul_params = sum(p.numel() for p in self.parameters() if p.ndim == 2) - self.wte.weight.numel()
        attention = sum(12 * self.config.width * window for window in self.config.layer_windows())
        return 6.0 * matmul_params + attention
