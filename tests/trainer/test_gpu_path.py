"""The CUDA path's pieces, checked on CPU: FlexAttention block masks against the SDPA band mask,
batched Muon against per-matrix Muon, and the switches that keep CPU runs exactly as they were."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.accel import compile_enabled, configure_backends, training_loss, wants_determinism
from trainer.model import GPT, Block, GPTConfig, sliding_window_block_mask, sliding_window_mask
from trainer.optim import Muon, orthogonalize, orthogonalize_batched
from trainer.outcomes import EXIT_CODES
from trainer.schema import config_to_json, default_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def small_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=256, context_length=256, depth=2, width=64, head_dim=16, window_pattern="SL", short_window=48
    )
    model = GPT(config)
    with torch.no_grad():  # the zero-initialised projections would hide attention entirely
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def test_flex_attention_block_masks_give_the_same_model_as_the_sdpa_band_mask() -> None:
    model = small_gpt()
    tokens = torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(1))
    short = tokens[:, :100]
    with torch.no_grad():
        dense, dense_short = model(tokens), model(short)
        model.use_flex_attention(CPU, compiled=False)  # eager FlexAttention: the unfused reference
        flex, flex_short = model(tokens), model(short)
    # The full-length path really is FlexAttention.
    assert all(isinstance(block, Block) and block.attn.block_mask is not None for block in model.blocks)
    torch.testing.assert_close(flex, dense, atol=2e-5, rtol=1e-4)
    assert torch.equal(flex_short, dense_short)  # a shorter sequence keeps the SDPA path
    # (FlexAttention's backward exists on CUDA only: the GPU bench's determinism check covers it.)


def test_the_block_mask_is_the_band_mask() -> None:
    block_mask = sliding_window_block_mask(256, 48, CPU)
    dense = block_mask.to_dense()  # (1, 1, blocks, blocks): which 128x128 blocks are computed at all
    band = sliding_window_mask(256, 48)
    blocks = band.view(2, 128, 2, 128).any(dim=(1, 3))
    assert torch.equal(dense[0, 0].bool(), blocks)


def test_batched_newton_schulz_matches_the_per_matrix_one() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in [(3, 32, 64), (4, 64, 16)]:  # wide and tall
        stack = torch.randn(shape, generator=generator)
        expected = torch.stack([orthogonalize(matrix) for matrix in stack])
        torch.testing.assert_close(orthogonalize_batched(stack), expected, atol=1e-5, rtol=1e-4)


def test_batched_muon_step_matches_the_per_matrix_step() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(32, 32), (32, 32), (128, 32), (32, 128)]
    one = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    two = [torch.nn.Parameter(parameter.detach().clone()) for parameter in one]
    per_matrix, batched = Muon(one, lr=0.02, weight_decay=0.1), Muon(two, lr=0.02, weight_decay=0.1)
    for _ in range(3):
        for left, right in zip(one, two, strict=True):
            gradient = torch.randn(left.shape, generator=generator)
            left.grad, right.grad = gradient.clone(), gradient.clone()
        per_matrix.step()
        batched._step_batched(batched.param_groups[0])  # what step() runs for CUDA parameters
    for left, right in zip(one, two, strict=True):
        torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-4)


def test_on_cpu_nothing_is_compiled_or_switched() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    configure_backends(CPU, deterministic=not before)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert not compile_enabled(CPU)
    model = small_gpt()
    assert training_loss(model, CPU) == model.loss
    assert all(isinstance(block, Block) and block.attn.flex_attention is None for block in model.blocks)


def test_determinism_defaults_to_on_for_flop_budgets_only() -> None:
    assert wants_determinism("auto", "flops") and not wants_determinism("auto", "seconds")
    assert wants_determinism("on", "seconds") and not wants_determinism("off", "flops")
    with pytest.raises(ValueError):
        wants_determinism("sometimes", "flops")


def test_an_unknown_determinism_choice_is_an_invalid_config(tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config_to_json(default_config())))
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(config_path), "--budget", "1e11", "--deterministic", "maybe"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert result.returncode == EXIT_CODES["invalid_config"]
    assert "--deterministic" in json.loads(result.stdout)["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the bench really runs (minutes)")
def test_the_gpu_bench_says_there_is_no_gpu_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "bench/trainer_gpu.py"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU" in result.stdout
