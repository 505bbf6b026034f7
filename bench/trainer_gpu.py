"""GPU throughput of the trainer vs a compiled plain loop over the same GPT, in one run.

    .venv/bin/python bench/trainer_gpu.py [--seconds 60] [--flops 1e16] [--corpus-dir DIR]
                                          [--peak-tflops 989.5] [--write]

On a machine without a CUDA GPU it says so and exits 0. Otherwise, on the `gpu` preset's default
config (micro-batch 64 x 2048):

1. the trainer as a worker runs it (`trainer.launch.run_training`, a warm fork, seconds budget):
   tokens/s, MFU, compile seconds (outside the budget) and the first step's seconds;
2. plain loops over the same `GPT` in this process: AdamW (fused), bf16 autocast, random tokens
   already on the GPU, eager and `torch.compile`d (the repo's SDPA attention, as the issue's
   baseline): tokens/s and MFU after warm-up steps;
3. determinism: two trainer runs with the same seed and FLOP budget (deterministic mode, the
   default for FLOP budgets) must give the same val_bpb; a third with `--deterministic off`
   measures what determinism costs.

MFU = FLOPs per token (6 x matmul parameters + attention, `trainer.flops`) x tokens/s / peak
(bf16 dense: H100/H200 989.5 TFLOP/s, A100 312; others need --peak-tflops). Targets: trainer
>= 0.9x the compiled plain loop, MFU >= 35% on an H100/H200-class GPU. `--write` puts the
report into bench/RESULTS.md (section `gpu`) with the date, GPU, driver and torch version.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_common import Report, print_table, write_results

from trainer.launch import run_training
from trainer.outcomes import TrainingSummary
from trainer.schema import PRESET_SETTINGS, default_config

PRESET = "gpu"
# bf16 dense tensor-core peak (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0}
PLAIN_WARMUP_STEPS = 5


def gpu_facts() -> dict[str, str]:
    driver = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.splitlines()[0]
    return {
        "gpu": torch.cuda.get_device_name(0),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
    }


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def trainer_run(workdir: Path, budget_kind: str, budget: float, args: argparse.Namespace, **kw: Any) -> TrainingSummary:
    summary = run_training(
        default_config(PRESET),
        preset=PRESET,
        budget_kind=budget_kind,
        budget_value=budget,
        seed=0,
        threads=4,
        workdir=workdir,
        timeout_seconds=budget * 3 + 900 if budget_kind == "seconds" else 3600,
        corpus_dir=args.corpus_dir,
        **kw,
    )
    if summary.failure_class != "ok":
        raise RuntimeError(f"the trainer run failed: {summary.failure_class}: {summary.error}")
    return summary


def plain_loop(seconds: float, compiled: bool) -> dict[str, float]:
    """Tokens/s of a minimal loop over the same GPT: random tokens, fused AdamW, bf16 autocast."""
    from trainer.train import build_model

    config = default_config(PRESET)
    context = PRESET_SETTINGS[PRESET].context_length
    micro_batch = int(config["DEVICE_BATCH_SIZE"])
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(config, PRESET).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_of = torch.compile(model.loss) if compiled else model.loss
    tokens = torch.randint(0, 256, (micro_batch, context + 1), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup_started = time.perf_counter()
    for _ in range(PLAIN_WARMUP_STEPS):
        step()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - warmup_started
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
        if steps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "tokens_per_second": steps * micro_batch * context / elapsed,
        "flops_per_token": model.flops_per_token(),
        "warmup_seconds": warmup,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="trainer's budget, plain loops' time")
    parser.add_argument("--flops", type=float, default=1e16, help="FLOP budget of the determinism runs")
    parser.add_argument("--corpus-dir", default=None, help="the trainer's corpus (default: the embedded plays)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak if the GPU is not known")
    parser.add_argument("--write", action="store_true", help="write the report into bench/RESULTS.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("trainer_gpu: no CUDA GPU on this machine; nothing to measure (exit 0).")
        return 0
    facts = gpu_facts()
    peak = peak_flops(facts["gpu"], args.peak_tflops)
    print(f"trainer_gpu: {facts}", flush=True)

    def mfu(tokens_per_second: float, flops_per_token: float) -> float:
        return math.nan if peak is None else 100 * tokens_per_second * flops_per_token / peak

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        timed = trainer_run(work / "timed", "seconds", args.seconds, args)
        print(f"trainer (seconds budget): {timed.tokens / timed.training_seconds:,.0f} tokens/s", flush=True)
        # The plain loops run in this process; their cached GPU memory is released before the
        # trainer (another process) needs the GPU again.
        eager = plain_loop(args.seconds / 2, compiled=False)
        compiled = plain_loop(args.seconds, compiled=True)
        torch.cuda.empty_cache()
        print(f"plain loops: eager {eager['tokens_per_second']:,.0f}, compiled {compiled['tokens_per_second']:,.0f}")
        first = trainer_run(work / "det-1", "flops", args.flops, args)
        second = trainer_run(work / "det-2", "flops", args.flops, args)
        loose = trainer_run(work / "nondet", "flops", args.flops, args, deterministic="off")

    flops_per_token = float(timed.extra["flops_per_token"])
    trainer_rate = timed.tokens / timed.training_seconds
    rows = [
        ["trainer (warm fork, seconds budget)", trainer_rate, mfu(trainer_rate, flops_per_token), 1.0],
        [
            "plain loop, eager",
            eager["tokens_per_second"],
            mfu(eager["tokens_per_second"], flops_per_token),
            eager["tokens_per_second"] / trainer_rate,
        ],
        [
            "plain loop, torch.compile",
            compiled["tokens_per_second"],
            mfu(compiled["tokens_per_second"], flops_per_token),
            compiled["tokens_per_second"] / trainer_rate,
        ],
    ]
    ratio = trainer_rate / compiled["tokens_per_second"]
    same = first.val_bpb == second.val_bpb
    det_rate = first.tokens / first.training_seconds
    loose_rate = loose.tokens / loose.training_seconds
    detail_rows = [
        ["trainer ÷ compiled plain loop", f"{ratio:.2f}x"],
        ["trainer MFU", f"{mfu(trainer_rate, flops_per_token):.1f}%"],
        ["compile (outside the budget), first training", f"{timed.extra.get('compile_seconds', math.nan):.1f} s"],
        ["compile, later trainings (Inductor's disk cache)", f"{first.extra.get('compile_seconds', math.nan):.1f} s"],
        ["first step after compile", f"{timed.extra.get('first_step_seconds', math.nan):.2f} s"],
        [
            "plain loop's first 5 steps (eager / compiled, incl. compile)",
            f"{eager['warmup_seconds']:.1f} s / {compiled['warmup_seconds']:.1f} s",
        ],
        [
            f"val_bpb, same seed and {args.flops:.3g} FLOPs, deterministic (two runs)",
            f"{first.val_bpb!r} / {second.val_bpb!r}: {'identical' if same else 'DIFFERENT'}",
        ],
        ["val_bpb with --deterministic off", repr(loose.val_bpb)],
        [
            "deterministic mode's cost (tokens/s on ÷ off)",
            f"{det_rate / loose_rate:.3f}x ({det_rate:,.0f} vs {loose_rate:,.0f})",
        ],
        ["corpus", str(timed.corpus)],
    ]
    report = Report(
        name="gpu",
        title="gpu: trainer throughput vs a compiled plain loop, MFU, first step, determinism",
        command=f"python bench/trainer_gpu.py --seconds {args.seconds:g} --flops {args.flops:g}",
        setup=(
            f"{facts['gpu']}, driver {facts['driver']}, torch {facts['torch']} (CUDA {facts['cuda']}); `gpu` "
            f"preset defaults ({timed.params / 1e6:.1f} M parameters, micro-batch "
            f"{timed.extra['micro_batch']} x {PRESET_SETTINGS[PRESET].context_length}); peak "
            f"{'unknown' if peak is None else f'{peak / 1e12:g} TFLOP/s'} bf16 dense."
        ),
        headers=["what", "tokens/s", "MFU %", "÷ trainer"],
        rows=rows,
        extra_tables=[("Ratios and checks:", ["measure", "value"], detail_rows)],
        targets=[
            (f"trainer ≥ 0.9x the compiled plain loop: {ratio:.2f}x", ratio >= 0.9),
            (
                f"MFU ≥ 35% (H100/H200 class): {mfu(trainer_rate, flops_per_token):.1f}%",
                None if peak is None else mfu(trainer_rate, flops_per_token) >= 35,
            ),
            ("same seed + FLOP budget → same val_bpb (deterministic mode)", same),
        ],
    )
    print_table(report.headers, report.rows)
    print()
    print_table(["measure", "value"], detail_rows)
    for description, met in report.targets:
        print(f"target: {description}: {'n/a' if met is None else ('met' if met else 'MISSED')}")
    if args.write:
        write_results(report, f"{facts['gpu']}, driver {facts['driver']}", "none (trainer only)")
        print("(written to bench/RESULTS.md, section gpu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
