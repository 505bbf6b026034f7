"""Measure the surrogate where searches go: search it, train what the searches found for real, refit, repeat.

A surrogate stands in for training only where it was checked against training, and searches leave the
configs it was fitted on within a few iterations. One round:

1. run searches on the current surrogate (seeds 1-3): a 3,000-sample random search over the whole
   schema, and greedy local searches of 30 iterations from the default (one or two knobs a step, as
   the built-in agent moves) — from the default start and, with ``--start tuned``, from the tuned one;
2. pick the configs they end on and the incumbents they pass through most, minus what is measured;
3. predict each with the surrogate as fitted before this round (these predictions are the held-out
   check: the configs are search-found and not in the fit), then train each for real on cpu-tiny at
   the surrogate's FLOP budget, 1 torch thread, on ``--seeds`` seeds;
4. append the real runs to ``trainer/data/surrogate_measurements.json`` with their provenance
   (round, search, prediction), so the next fit includes them;
5. print held-out Spearman and MAE of predicted vs real (each config's mean over its seeds).

    .venv/bin/python bench/surrogate_rounds.py round --round 1 [--limit 16] [--seeds 0] [--parallel 2]
    .venv/bin/python bench/surrogate_rounds.py report            # every round's held-out figures
    .venv/bin/python bench/surrogate_rounds.py tuned --top 3 --seeds 0 1 2   # -> trainer/data/tuned_starts.json
    .venv/bin/python bench/surrogate_rounds.py optimum --seeds 1 2 3   # search optima trained for real on their seeds

Resumable: a round's plan is kept in ``bench/out/surrogate_round_<n>.json`` and measured configs are
skipped. Stop rounds when the held-out search-found set reaches Spearman >= 0.8 and MAE <= 0.03.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from trainer_collect_measurements import random_value
from trainer_common import DEFAULT_FLOPS, PRESET, Job, measurement_record, run_jobs

from trainer.outcomes import TrainingSummary
from trainer.schema import KNOBS, ConfigError, config_to_json, default_config, validate_config
from trainer.seed_noise import maths_key
from trainer.surrogate import (
    MEASUREMENTS_PATH,
    Surrogate,
    fit_surrogate,
    load_measurements,
    surrogate_evaluate,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TUNABLE = [name for name, knob in KNOBS.items() if not knob.locked]
RANDOM_SAMPLES = 3000
LOCAL_ITERATIONS = 30
LOCAL_SEARCHES_PER_SEED = 4
PATTERNS = ("SSSL", "SSLL", "SLSL", "SSSS", "LLLL", "SL", "L", "S", "SSL", "SLLL")
BETAS = ((0.8, 0.95), (0.9, 0.95), (0.9, 0.99), (0.85, 0.98), (0.7, 0.95), (0.9, 0.999))


def evaluate(model: Surrogate, config: dict[str, Any], seed: int) -> float:
    summary = surrogate_evaluate(config, budget_kind="flops", budget_value=DEFAULT_FLOPS, seed=seed, surrogate=model)
    return summary.val_bpb if summary.val_bpb is not None else math.inf


def step_value(name: str, current: Any, rng: random.Random) -> Any:
    """One step of one knob, as the built-in agent takes them (x/÷1.5 on log knobs, x/÷2 on powers of two)."""
    knob = KNOBS[name]
    if knob.type == "pattern":
        return rng.choice([p for p in PATTERNS if p != current])
    if knob.type == "tuple":
        return rng.choice([b for b in BETAS if list(b) != list(current)])
    lo, hi = knob.bounds(PRESET)
    assert lo is not None and hi is not None
    up = rng.random() < 0.5
    if knob.type == "pow2":
        value = current * 2 if up else current // 2
    elif knob.log:
        value = current * 1.5 if up else current / 1.5
    else:
        value = current + (0.1 if up else -0.1) * (hi - lo)
    return min(max(value, lo), hi)


def random_search(model: Surrogate, seed: int) -> Iterator[dict[str, Any]]:
    """The best of RANDOM_SAMPLES configs drawn over the whole schema (yields it once)."""
    rng = random.Random(f"random:{seed}")
    best: tuple[float, dict[str, Any]] | None = None
    for _ in range(RANDOM_SAMPLES):
        try:
            config = validate_config(
                {**default_config(PRESET), **{n: random_value(n, rng) for n in TUNABLE}}, preset=PRESET
            )
        except ConfigError:
            continue
        value = evaluate(model, config, seed)
        if best is None or value < best[0]:
            best = (value, config)
    assert best is not None
    yield best[1]


def local_search(
    model: Surrogate, seed: int, index: int, start: dict[str, Any], iterations: int = LOCAL_ITERATIONS
) -> Iterator[dict[str, Any]]:
    """Greedy: change one knob (a second with probability 1/4) from the incumbent; keep strictly better.

    Yields every incumbent, the end config last.
    """
    rng = random.Random(f"local:{seed}:{index}")
    incumbent = validate_config(start, preset=PRESET)
    best = evaluate(model, incumbent, seed)
    yield incumbent
    for _ in range(iterations):
        names = rng.sample(TUNABLE, 2 if rng.random() < 0.25 else 1)
        try:
            candidate = validate_config(
                {**incumbent, **{n: step_value(n, incumbent[n], rng) for n in names}}, preset=PRESET
            )
        except ConfigError:
            continue
        value = evaluate(model, candidate, seed)
        if value < best:
            incumbent, best = candidate, value
            yield incumbent
    yield incumbent


def measured_keys(data: dict[str, Any]) -> set[str]:
    return {maths_key(validate_config(r["config"], preset=PRESET), PRESET) for r in data["measurements"]}


def plan_round(model: Surrogate, data: dict[str, Any], limit: int, starts: dict[str, dict[str, Any]]) -> list[dict]:
    """Search end configs first (round-robin over searches), then the most passed-through incumbents."""
    ends: list[tuple[str, dict[str, Any]]] = []
    passed: Counter[str] = Counter()
    configs: dict[str, dict[str, Any]] = {}
    for seed in (1, 2, 3):
        ends.append((f"random-3000 seed {seed}", next(random_search(model, seed))))
        for start_name, start in starts.items():
            for index in range(LOCAL_SEARCHES_PER_SEED):
                path = list(local_search(model, seed, index, start))
                ends.append((f"local-{LOCAL_ITERATIONS} from {start_name} seed {seed} #{index}", path[-1]))
                for config in path[1:-1]:
                    key = maths_key(config, PRESET)
                    passed[key] += 1
                    configs[key] = config
    known = measured_keys(data)
    chosen: list[dict[str, Any]] = []
    for search, config in ends + [(f"passed through by {n} searches", configs[k]) for k, n in passed.most_common()]:
        key = maths_key(config, PRESET)
        if key in known:
            continue
        known.add(key)
        chosen.append({"search": search, "config": config_to_json(config)})
    return chosen[:limit]


def predictions(model: Surrogate, config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    summary = surrogate_evaluate(config, budget_kind="flops", budget_value=DEFAULT_FLOPS, seed=seed, surrogate=model)
    extra = summary.extra
    return {
        "predicted_mean_val_bpb": extra.get("predicted_mean_val_bpb"),
        "predicted_val_bpb": summary.val_bpb,  # with the surrogate's noise for this seed
        "extrapolated": extra.get("extrapolated"),
        "support_distance": extra.get("support_distance"),
    }


def train_and_append(entries: list[dict[str, Any]], seeds: list[int], parallel: int, provenance: dict) -> None:
    """Train each entry for real on every seed and append the runs to the measurements file as they finish."""
    data = load_measurements()
    done = {(json.dumps(r["config"], sort_keys=True), r["seed"]) for r in data["measurements"]}
    jobs, meta = [], []
    for number, entry in enumerate(entries):
        for seed in [entry["seed"]] if "seed" in entry else seeds:
            if (json.dumps(entry["config"], sort_keys=True), seed) in done:
                continue
            jobs.append(Job(f"{provenance['kind']} {number}", entry["config"], seed))
            meta.append(entry)
    print(f"{len(jobs)} trainings to run ({parallel} at a time)", flush=True)
    for start in range(0, len(jobs), parallel):
        batch, batch_meta = jobs[start : start + parallel], meta[start : start + parallel]
        results = run_jobs(batch, parallel=parallel)
        with measurements_locked() as data:
            append_results(data, batch, batch_meta, results, provenance, parallel)


@contextlib.contextmanager
def measurements_locked() -> Iterator[dict[str, Any]]:
    """Read, change and write the measurements file under an exclusive lock (rounds may run side by side)."""
    with (OUT / "measurements.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_measurements()
        yield data
        data["header"]["count"] = len(data["measurements"])
        MEASUREMENTS_PATH.write_text(json.dumps(data, indent=1) + "\n")


def append_results(
    data: dict[str, Any],
    batch: list[Job],
    batch_meta: list[dict[str, Any]],
    results: list[TrainingSummary],
    provenance: dict[str, Any],
    parallel: int,
) -> None:
    for job, entry, summary in zip(batch, batch_meta, results, strict=True):
        record = measurement_record(
            f"{provenance['kind']}: {entry['search']}", provenance["kind"], entry["config"], job.seed,
            DEFAULT_FLOPS, summary, parallel,
        )
        data["measurements"].append(record | {"provenance": provenance | {"search": entry["search"],
                                                                         **entry["prediction"]}})


def held_out(kind_prefix: str) -> dict[str, Any]:
    """Predicted (before the round's configs were in the fit) vs real, one point per config (mean over seeds)."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for record in load_measurements()["measurements"]:
        provenance = record.get("provenance") or {}
        if str(provenance.get("kind", "")).startswith(kind_prefix) and record["failure_class"] == "ok":
            by_config.setdefault(json.dumps(record["config"], sort_keys=True), []).append(record)
    predicted = np.array([runs[0]["provenance"]["predicted_mean_val_bpb"] for runs in by_config.values()])
    real = np.array([np.mean([r["val_bpb"] for r in runs]) for runs in by_config.values()])
    if len(real) < 3:
        return {"configs": len(real)}
    errors = predicted - real
    return {
        "configs": len(real),
        "runs": sum(len(runs) for runs in by_config.values()),
        "spearman": float(stats.spearmanr(predicted, real).statistic),
        "mae": float(np.abs(errors).mean()),
        "mean_error": float(errors.mean()),
        "real_range": (float(real.min()), float(real.max())),
        "extrapolated": int(sum(bool(runs[0]["provenance"]["extrapolated"]) for runs in by_config.values())),
    }


def tuned_starts() -> dict[str, dict[str, Any]]:
    path = ROOT / "trainer" / "data" / "tuned_starts.json"
    if not path.exists():
        return {}
    entry = json.loads(path.read_text()).get(PRESET)
    return {"tuned": {**default_config(PRESET), **entry["config"]}} if entry else {}


def command_round(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plan_path = OUT / f"surrogate_round_{args.round}.json"
    if plan_path.exists():
        entries = json.loads(plan_path.read_text())
    else:
        data = load_measurements()
        model = fit_surrogate(data)
        starts = {"default": default_config(PRESET)} | (tuned_starts() if args.start == "tuned" else {})
        entries = plan_round(model, data, args.limit, starts)
        for entry in entries:
            entry["prediction"] = predictions(model, entry["config"])
        plan_path.write_text(json.dumps(entries, indent=1))
    for entry in entries:
        print(f"  {entry['search']:<48} predicted {entry['prediction']['predicted_mean_val_bpb']:.4f}"
              f"{' (extrapolated)' if entry['prediction']['extrapolated'] else ''}")
    provenance = {"kind": f"search-found round {args.round}", "fitted_on": load_measurements()["header"]["count"]}
    train_and_append(entries, args.seeds, args.parallel, provenance)
    print(json.dumps(held_out(f"search-found round {args.round}"), indent=1))


def command_optimum(args: argparse.Namespace) -> None:
    """The optimum of a random search and of a long local search per seed, trained for real on that seed."""
    data = load_measurements()
    model = fit_surrogate(data)
    entries = []
    for seed in args.seeds:
        found = {
            f"optimum random-{RANDOM_SAMPLES} seed {seed}": next(random_search(model, seed)),
            f"optimum local-{args.iterations} seed {seed}": list(
                local_search(model, seed, 0, default_config(PRESET), iterations=args.iterations)
            )[-1],
        }
        for search, config in found.items():
            entry = {"search": search, "config": config_to_json(config), "seed": seed}
            entry["prediction"] = predictions(model, config, seed)
            entries.append(entry)
    provenance = {"kind": "search optimum", "fitted_on": data["header"]["count"]}
    train_and_append(entries, [], args.parallel, provenance)
    baseline = {
        r["seed"]: r["val_bpb"] for r in load_measurements()["measurements"] if r["kind"] == "default"
    }
    for entry in entries:
        real = next(
            r["val_bpb"] for r in reversed(load_measurements()["measurements"])
            if r["config"] == entry["config"] and r["seed"] == entry["seed"]
        )
        predicted = entry["prediction"]["predicted_mean_val_bpb"]
        with_noise = entry["prediction"]["predicted_val_bpb"]
        print(f"{entry['search']:<34} predicted mean {predicted:.4f} (with this seed's simulated noise "
              f"{with_noise:.4f}) real {real:.4f}: |error| {abs(real - predicted):.4f}; real baseline on this seed "
              f"{baseline.get(entry['seed'], float('nan')):.4f}")


def command_tuned(args: argparse.Namespace) -> None:
    """Re-train the best search-found configs on more seeds; the best mean becomes the preset's tuned start."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for record in load_measurements()["measurements"]:
        if record["failure_class"] == "ok" and record["budget_value"] == DEFAULT_FLOPS:
            by_config.setdefault(json.dumps(record["config"], sort_keys=True), []).append(record)
    ranked = sorted(by_config.values(), key=lambda runs: min(r["val_bpb"] for r in runs))[: args.top]
    entries = [
        {"search": f"tuned-start candidate {rank}", "config": runs[0]["config"],
         "prediction": predictions(fit_surrogate(load_measurements()), runs[0]["config"])}
        for rank, runs in enumerate(ranked, start=1)
    ]
    train_and_append(entries, args.seeds, args.parallel, {"kind": "tuned-start confirmation"})
    measurements = load_measurements()["measurements"]
    summary = []
    for entry in entries:
        runs = sorted((r for r in measurements if r["config"] == entry["config"] and r["failure_class"] == "ok"
                       and r["budget_value"] == DEFAULT_FLOPS), key=lambda r: r["seed"])
        summary.append((float(np.mean([r["val_bpb"] for r in runs])), entry, runs))
        print(f"{entry['search']}: mean {summary[-1][0]:.4f} over seeds {[r['seed'] for r in runs]}")
    _, entry, runs = min(summary, key=lambda item: item[0])
    defaults = {r["seed"]: r["val_bpb"] for r in measurements if r["kind"] == "default"}
    runs = [r for r in runs if r["seed"] in defaults]  # paired with the default on the same seeds
    path = ROOT / "trainer" / "data" / "tuned_starts.json"
    starts = json.loads(path.read_text()) if path.exists() else {}
    starts[PRESET] = {  # trainer/tuned_start.py's format
        "config": entry["config"],
        "real_val_bpb": [r["val_bpb"] for r in runs],
        "seeds": [r["seed"] for r in runs],
        "budget_flops": DEFAULT_FLOPS,
        "threads": 1,
        "default_real_val_bpb": [defaults[r["seed"]] for r in runs],
        "source": (
            f"bench/surrogate_rounds.py tuned: of the {args.top} configs with the lowest single real run in "
            "trainer/data/surrogate_measurements.json, the lowest mean over the seeds above, each re-trained for "
            "real on cpu-tiny (records of kind 'tuned-start confirmation' and the search rounds there)"
        ),
    }
    path.write_text(json.dumps(starts, indent=1) + "\n")
    print(f"wrote {path}")


def command_report(_: argparse.Namespace) -> None:
    kinds = sorted({(r.get("provenance") or {}).get("kind", "") for r in load_measurements()["measurements"]} - {""})
    for kind in kinds:
        print(kind, json.dumps(held_out(kind)))


def main() -> None:
    os.nice(10)  # real trainings share the machine; their val_bpb under a FLOP budget does not depend on load
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    round_parser = sub.add_parser("round", help="search, train what the searches found, append")
    round_parser.add_argument("--round", type=int, required=True)
    round_parser.add_argument("--limit", type=int, default=16)
    round_parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    round_parser.add_argument("--parallel", type=int, default=2)
    round_parser.add_argument("--start", choices=("default", "tuned"), default="default")
    round_parser.set_defaults(handler=command_round)
    optimum_parser = sub.add_parser("optimum", help="search optima trained for real, against their prediction")
    optimum_parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    optimum_parser.add_argument("--iterations", type=int, default=100)
    optimum_parser.add_argument("--parallel", type=int, default=2)
    optimum_parser.set_defaults(handler=command_optimum)
    tuned_parser = sub.add_parser("tuned", help="confirm the best found configs on more seeds; write the tuned start")
    tuned_parser.add_argument("--top", type=int, default=3)
    tuned_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    tuned_parser.add_argument("--parallel", type=int, default=2)
    tuned_parser.set_defaults(handler=command_tuned)
    sub.add_parser("report", help="held-out figures of every round").set_defaults(handler=command_report)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
