"""Throughput of the trainer's loop vs a minimal plain-PyTorch loop over the same model and batch.

Both run in this process on the default cpu-tiny config for the same number of optimizer steps,
interleaved (trainer, plain, trainer, plain, ...) so machine load hits both alike. The plain loop
keeps the same model, batch and optimizer (Muon + AdamW) but drops everything else (schedule,
budget accounting, divergence checks, progress lines, per-step loss sync). A second plain row uses
AdamW only, to show what Muon's Newton-Schulz iterations cost.

    .venv/bin/python bench/trainer_throughput.py [--steps 20] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the trainer's subprocess does; before torch loads

import torch

from trainer.corpus import load_corpus
from trainer.optim import build_optimizer
from trainer.schema import PRESET_SETTINGS, default_config
from trainer.train import RunProgress, build_model, train

PRESET = "cpu-tiny"


def trainer_tokens_per_second(steps: int) -> float:
    config = default_config(PRESET)
    probe = build_model(config, PRESET)
    budget = (steps + 0.5) * probe.flops_per_token() * config["TOTAL_BATCH_SIZE"]
    progress = RunProgress()
    train(
        config, preset=PRESET, budget_kind="flops", budget_value=budget, seed=0, progress=progress, emit=lambda _: None
    )
    assert progress.steps == steps
    return progress.tokens / progress.training_seconds


def plain_tokens_per_second(steps: int, adamw_only: bool) -> float:
    config = default_config(PRESET)
    context = PRESET_SETTINGS[PRESET].context_length
    batch = config["TOTAL_BATCH_SIZE"] // context
    torch.manual_seed(0)
    model = build_model(config, PRESET)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3) if adamw_only else build_optimizer(model, config)
    data = torch.frombuffer(bytearray(load_corpus().train), dtype=torch.uint8)
    started = time.perf_counter()
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - context - 1, (batch,))
        windows = data[starts[:, None] + torch.arange(context + 1)].long()
        loss = model.loss(windows[:, :-1], windows[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch * context / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[float]] = {"trainer": [], "plain (same optimizers)": [], "plain (AdamW only)": []}
    for round_index in range(args.rounds):
        results["trainer"].append(trainer_tokens_per_second(args.steps))
        results["plain (same optimizers)"].append(plain_tokens_per_second(args.steps, adamw_only=False))
        results["plain (AdamW only)"].append(plain_tokens_per_second(args.steps, adamw_only=True))
        print(f"round {round_index + 1}: " + ", ".join(f"{k}={v[-1]:,.0f} tok/s" for k, v in results.items()))
    print(f"\ncpu-tiny default config, {args.steps} steps x {args.rounds} rounds, {args.threads} threads")
    print(f"{'loop':<26} {'median tok/s':>12} {'best tok/s':>12}")
    for name, values in results.items():
        print(f"{name:<26} {statistics.median(values):>12,.0f} {max(values):>12,.0f}")
    ratios = [t / p for t, p in zip(results["trainer"], results["plain (same optimizers)"], strict=True)]
    print(f"\ntrainer / plain (same optimizers), per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"median ratio {statistics.median(ratios):.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
