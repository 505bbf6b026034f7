"""The training loop: train under a budget, then measure val_bpb on the fixed validation range.

Budgets:
- ``flops``: a fixed compute budget. Steps = floor(budget / FLOPs per step), where FLOPs per
  step = ``GPT.flops_per_token()`` x TOTAL_BATCH_SIZE. The schedule's progress is step / steps,
  so the run does not depend on machine speed: same config + seed + budget gives the same val_bpb
  under any load (on a given device, thread count and torch build).
- ``seconds``: wall-clock training time, the paper's setting. Progress is elapsed / budget;
  smaller batches buy more steps. Noisy on a shared machine.

Evaluation is not part of either budget.
"""

from __future__ import annotations

import math
import random
import resource
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.accel import (
    autocast_context,
    compile_enabled,
    configure_backends,
    select_device,
    training_loss,
    wants_determinism,
    warm_up,
)
from trainer.budget import check_budget
from trainer.corpus import VOCAB_SIZE, load_corpus
from trainer.corpus_dir import CorpusDirError, load_corpus_dir
from trainer.model import GPT, GPTConfig
from trainer.optim import build_optimizer, lr_multiplier
from trainer.schema import PRESET_SETTINGS, ConfigError, model_width

PROGRESS_INTERVAL_SECONDS = 0.5
DIVERGENCE_FACTOR = 2.0  # a loss above twice the first step's loss (after warmup) counts as divergence
EVAL_SEQUENCES_PER_BATCH = 64
STDERR_TAIL_LINES = 20

Emit = Callable[[dict[str, Any]], None]


class DivergedError(RuntimeError):
    """Training loss became non-finite or blew up; training stops at once."""


@dataclass
class RunProgress:
    """What the loop has done so far; kept outside the loop so failure summaries can report it."""

    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    training_seconds: float = 0.0
    eval_seconds: float = 0.0
    params: int = 0
    device: str = "cpu"
    initial_train_loss: float | None = None
    final_train_loss: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: Mapping[str, Any], preset: str) -> GPT:
    settings = PRESET_SETTINGS[preset]
    return GPT(
        GPTConfig(
            vocab_size=VOCAB_SIZE,
            context_length=settings.context_length,
            depth=int(config["DEPTH"]),
            width=model_width(config),
            head_dim=int(config["HEAD_DIM"]),
            window_pattern=str(config["WINDOW_PATTERN"]),
            short_window=settings.short_window,
        )
    )


def sample_batch(
    data: torch.Tensor, batch: int, context: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of ``context + 1`` bytes from the training stream (inputs, next-byte targets)."""
    starts = torch.randint(0, data.numel() - context - 1, (batch,), generator=generator)
    windows = data[starts[:, None] + torch.arange(context + 1)].long()
    windows = windows.to(device, non_blocking=True)
    return windows[:, :-1], windows[:, 1:]


def training_text(corpus_dir: str | None, val_bytes: int) -> tuple[torch.Tensor, bytes, dict[str, Any]]:
    """The training stream (uint8 tensor), the fixed validation range, and what the summary says about them.

    The embedded plays by default; a user's corpus directory (``trainer.corpus_dir``) is memory-mapped.
    """
    if corpus_dir is None:
        corpus = load_corpus()
        return (
            torch.frombuffer(bytearray(corpus.train), dtype=torch.uint8),
            corpus.validation_range(val_bytes),
            {
                "corpus_train_bytes": len(corpus.train),
                "corpus_validation_plays": [name.rsplit("/", 1)[-1] for name in corpus.validation_plays],
            },
        )
    user = load_corpus_dir(corpus_dir)
    return (
        torch.from_numpy(user.train),
        user.validation_range(val_bytes),
        {
            "corpus": user.label,
            "corpus_train_bytes": len(user.train),
            "corpus_documents": user.documents,
            "corpus_validation_documents": user.validation_documents,
        },
    )


# Bytes each token stands for. With a byte-level tokenizer every token is one byte, but val_bpb
# divides by this explicit count so that the formula stays right if the tokenizer ever changes.
TOKEN_BYTE_LENGTHS = torch.tensor([len(bytes([token])) for token in range(VOCAB_SIZE)], dtype=torch.float64)


@torch.no_grad()
def evaluate_bpb(model: GPT, validation: bytes, device: torch.device) -> float:
    """Bits per byte over the whole range: every byte after the first is predicted from its predecessors.

    Sum of cross-entropy in nats over all predicted bytes / (ln 2 x the number of bytes they cover).
    The range is cut into context-length chunks (the last one may be shorter); each chunk starts fresh.
    """
    model.eval()
    context = model.config.context_length
    tokens = torch.tensor(list(validation), dtype=torch.long)
    inputs, targets = tokens[:-1], tokens[1:]
    total_nats = 0.0
    full = (inputs.numel() // context) * context
    chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
    if full:
        x_full, y_full = inputs[:full].view(-1, context), targets[:full].view(-1, context)
        for start in range(0, x_full.size(0), EVAL_SEQUENCES_PER_BATCH):
            end = start + EVAL_SEQUENCES_PER_BATCH
            chunks.append((x_full[start:end], y_full[start:end]))
    if full < inputs.numel():
        chunks.append((inputs[full:][None], targets[full:][None]))
    for x, y in chunks:
        with autocast_context(device):
            logits = model(x.to(device))
        # float64 cross-entropy: a sum over 10^5 bytes keeps ~1e-12 precision instead of float32's ~1e-7.
        nats = F.cross_entropy(logits.double().view(-1, logits.size(-1)), y.to(device).view(-1), reduction="sum")
        total_nats += float(nats.item())
    covered_bytes = float(TOKEN_BYTE_LENGTHS[targets].sum().item())
    model.train()
    return total_nats / (math.log(2) * covered_bytes)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the whole process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def train(
    config: Mapping[str, Any],
    *,
    preset: str,
    budget_kind: str,
    budget_value: float,
    seed: int,
    progress: RunProgress,
    emit: Emit,
    corpus_dir: str | None = None,
    deterministic: str = "auto",
) -> float:
    """Train ``config`` (already validated) under the budget; returns val_bpb. Updates ``progress`` as it goes."""
    planned_steps = check_budget(config, preset, budget_kind, budget_value)
    settings = PRESET_SETTINGS[preset]
    device = select_device()
    progress.device = str(device)
    is_deterministic = wants_determinism(deterministic, budget_kind)
    configure_backends(device, deterministic=is_deterministic)
    seed_everything(seed)

    train_data, validation, corpus_details = training_text(corpus_dir, settings.val_bytes)
    model = build_model(config, preset).to(device)
    optimizer = build_optimizer(model, config)
    progress.params = model.num_params()

    context = settings.context_length
    total_batch = int(config["TOTAL_BATCH_SIZE"])
    micro_batch = min(int(config["DEVICE_BATCH_SIZE"]), total_batch // context)
    accumulation = total_batch // (micro_batch * context)
    flops_per_step = model.flops_per_token() * total_batch
    loss_of = training_loss(model, device)
    compile_started = time.perf_counter()
    if compile_enabled(device):
        warm_up(loss_of, micro_batch, context, device)
        optimizer.zero_grad()
    progress.details.update(
        micro_batch=micro_batch,
        grad_accumulation=accumulation,
        flops_per_token=model.flops_per_token(),
        planned_steps=planned_steps,
        val_bytes=len(validation) - 1,
        **corpus_details,
        width=model.config.width,
        layer_windows=model.config.layer_windows(),
        compiled=compile_enabled(device),
        compile_seconds=round(time.perf_counter() - compile_started, 3),
        attention="flex" if device.type == "cuda" else "sdpa",
        deterministic=is_deterministic if device.type == "cuda" else True,
    )

    generator = torch.Generator().manual_seed(seed)
    warmup, warmdown, final_frac = (config["WARMUP_RATIO"], config["WARMDOWN_RATIO"], config["FINAL_LR_FRAC"])
    started = time.perf_counter()
    last_emit = -math.inf
    fraction = 0.0
    while True:
        elapsed = time.perf_counter() - started
        if planned_steps is not None:
            if progress.steps >= planned_steps:
                break
            fraction = progress.steps / planned_steps
        else:
            if elapsed >= budget_value:
                break
            fraction = elapsed / budget_value
        multiplier = lr_multiplier(fraction, warmup, warmdown, final_frac)
        optimizer.set_lr_multiplier(multiplier)

        loss_sum = torch.zeros((), device=device)
        for _ in range(accumulation):
            inputs, targets = sample_batch(train_data, micro_batch, context, generator, device)
            with autocast_context(device):
                loss = loss_of(inputs, targets)
            (loss / accumulation).backward()
            loss_sum += loss.detach()
        optimizer.step()
        optimizer.zero_grad()

        train_loss = float(loss_sum.item()) / accumulation
        progress.steps += 1
        progress.tokens += total_batch
        progress.flops += flops_per_step
        progress.training_seconds = time.perf_counter() - started
        progress.final_train_loss = train_loss
        if progress.initial_train_loss is None:
            progress.initial_train_loss = train_loss
            progress.details["first_step_seconds"] = round(progress.training_seconds, 3)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} at step {progress.steps}")
        if fraction >= warmup and train_loss > DIVERGENCE_FACTOR * progress.initial_train_loss:
            raise DivergedError(
                f"training loss {train_loss:.3f} at step {progress.steps} exceeds {DIVERGENCE_FACTOR:g}x "
                f"the initial {progress.initial_train_loss:.3f}"
            )

        now = time.perf_counter()
        if progress.steps == 1 or now - last_emit >= PROGRESS_INTERVAL_SECONDS:
            last_emit = now
            emit(_progress_line(progress, train_loss, multiplier, config, budget_kind, budget_value))

    progress.training_seconds = time.perf_counter() - started
    final_fraction = 1.0 if planned_steps is not None else min(1.0, progress.training_seconds / budget_value)
    emit(
        _progress_line(
            progress,
            progress.final_train_loss or math.nan,
            lr_multiplier(final_fraction, warmup, warmdown, final_frac),
            config,
            budget_kind,
            budget_value,
        )
        | {"final": True}
    )

    eval_started = time.perf_counter()
    val_bpb = evaluate_bpb(model, validation, device)
    progress.eval_seconds = time.perf_counter() - eval_started
    if not math.isfinite(val_bpb):
        raise DivergedError(f"validation loss is {val_bpb} although training loss stayed finite")
    return val_bpb


def _progress_line(
    progress: RunProgress,
    train_loss: float,
    multiplier: float,
    config: Mapping[str, Any],
    budget_kind: str,
    budget_value: float,
) -> dict[str, Any]:
    used = progress.flops if budget_kind == "flops" else progress.training_seconds
    return {
        "type": "progress",
        "step": progress.steps,
        "tokens": progress.tokens,
        "train_loss": train_loss if math.isfinite(train_loss) else None,
        "lr": multiplier * float(config["MATRIX_LR"]),
        "lr_multiplier": multiplier,
        "elapsed": round(progress.training_seconds, 3),
        "budget_fraction": min(1.0, used / budget_value),
    }


def run(
    config: Mapping[str, Any],
    *,
    preset: str,
    budget_kind: str,
    budget_value: float,
    seed: int,
    threads: int,
    emit: Emit,
    corpus_dir: str | None = None,
    deterministic: str = "auto",
) -> dict[str, Any]:
    """Train and evaluate, classifying any failure. Returns the summary dict (``type: summary``)."""
    torch.set_num_threads(threads)
    progress = RunProgress()
    failure_class, error, val_bpb = "ok", None, None
    try:
        val_bpb = train(
            config,
            preset=preset,
            budget_kind=budget_kind,
            budget_value=budget_value,
            seed=seed,
            progress=progress,
            emit=emit,
            corpus_dir=corpus_dir,
            deterministic=deterministic,
        )
    except (ConfigError, CorpusDirError) as exc:
        failure_class, error = "invalid_config", str(exc)
    except DivergedError as exc:
        failure_class, error = "diverged", str(exc)
    except BaseException as exc:  # every failure must end in a classified summary
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if is_out_of_memory(exc):
            failure_class, error = "out_of_memory", f"{type(exc).__name__}: {exc}"
        else:
            tail = traceback.format_exc().strip().splitlines()[-STDERR_TAIL_LINES:]
            failure_class, error = "crashed", "\n".join(tail)
    device = torch.device(progress.device)
    return {
        "type": "summary",
        "val_bpb": val_bpb,
        "failure_class": failure_class,
        "error": error,
        "steps": progress.steps,
        "tokens": progress.tokens,
        "flops": progress.flops,
        "training_seconds": round(progress.training_seconds, 3),
        "eval_seconds": round(progress.eval_seconds, 3),
        "params": progress.params,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": progress.device,
        "initial_train_loss": progress.initial_train_loss,
        "final_train_loss": progress.final_train_loss,
        "torch": torch.__version__,
        **progress.details,
    }
