"""Seed noise and one-knob effects of the cpu-tiny preset, measured with the real launcher.

- noise: the default config over N seeds under the compute budget, and under a wall-clock
  budget (the paper's setting) with the same nominal training time;
- landscape: one-knob changes from the default, each over the first K seeds, as a difference
  from the default's mean on the same seeds, beside the seed sd;
- threads: the default config, seed 0, with 2 threads alone vs 1 thread.

Runs 2 trainings at a time with 1 thread each (2 cores).

    .venv/bin/python bench/trainer_noise_landscape.py [--seeds 5] [--landscape-seeds 2] [--seconds 25]
"""

from __future__ import annotations

import argparse
import statistics

from trainer_common import DEFAULT_FLOPS, Job, config_for, mean_sd, run_jobs


def landscape() -> dict[str, dict[str, object]]:
    """One-knob changes relative to the current default config."""
    default = config_for({})
    return {
        "TOTAL_BATCH_SIZE /2": {"TOTAL_BATCH_SIZE": default["TOTAL_BATCH_SIZE"] // 2},
        "TOTAL_BATCH_SIZE /4": {"TOTAL_BATCH_SIZE": default["TOTAL_BATCH_SIZE"] // 4},
        "MATRIX_LR x2": {"MATRIX_LR": default["MATRIX_LR"] * 2},
        "MATRIX_LR /2": {"MATRIX_LR": default["MATRIX_LR"] / 2},
        "WINDOW_PATTERN L": {"WINDOW_PATTERN": "L"},
        "WINDOW_PATTERN SL": {"WINDOW_PATTERN": "SL"},
        "WINDOW_PATTERN S": {"WINDOW_PATTERN": "S"},
        "WEIGHT_DECAY 0.1": {"WEIGHT_DECAY": 0.1},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--landscape-seeds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=25.0, help="wall-clock budget for the noise comparison")
    parser.add_argument("--skip-seconds", action="store_true")
    args = parser.parse_args()

    seeds = list(range(args.seeds))
    jobs = [Job("default", {}, seed) for seed in seeds]
    jobs += [
        Job(label, changes, seed) for label, changes in landscape().items() for seed in seeds[: args.landscape_seeds]
    ]
    if not args.skip_seconds:
        jobs += [Job("default (seconds)", {}, seed, budget_kind="seconds", budget_value=args.seconds) for seed in seeds]
    results = run_jobs(jobs)
    by_label: dict[str, dict[int, float | None]] = {}
    steps: dict[str, list[int]] = {}
    for job, summary in zip(jobs, results, strict=True):
        by_label.setdefault(job.label, {})[job.seed] = summary.val_bpb
        steps.setdefault(job.label, []).append(summary.steps)

    default_values = [v for v in by_label["default"].values() if v is not None]
    default_mean, default_sd = mean_sd(default_values)
    print(f"\nnoise: default config, {len(default_values)} seeds")
    print(
        f"  compute budget {DEFAULT_FLOPS:g} FLOPs: val_bpb {default_mean:.4f} +- {default_sd:.4f} (sd), "
        f"steps {steps['default'][0]}"
    )
    if not args.skip_seconds:
        timed = [v for v in by_label["default (seconds)"].values() if v is not None]
        timed_mean, timed_sd = mean_sd(timed)
        print(
            f"  wall-clock budget {args.seconds:g} s:   val_bpb {timed_mean:.4f} +- {timed_sd:.4f} (sd), "
            f"steps {min(steps['default (seconds)'])}..{max(steps['default (seconds)'])}"
        )

    k = args.landscape_seeds
    base_k = statistics.fmean(by_label["default"][seed] or float("nan") for seed in seeds[:k])
    print(
        f"\nlandscape: mean over seeds 0..{k - 1}; effect = variant - default on the same seeds "
        f"(default {base_k:.4f}); seed sd of one run {default_sd:.4f}, of a {k}-seed mean {default_sd / k**0.5:.4f}"
    )
    print(f"{'change':<22} {'value':>10} {'val_bpb':>8} {'effect':>8} {'effect/sd':>9} {'steps':>6}")
    for label, changes in landscape().items():
        values = [by_label[label][seed] for seed in seeds[:k]]
        if any(v is None for v in values):
            print(f"{label:<22} failed: {values}")
            continue
        mean = statistics.fmean(v for v in values if v is not None)
        shown = ", ".join(str(v) for v in changes.values())
        print(
            f"{label:<22} {shown:>10} {mean:>8.4f} {mean - base_k:>+8.4f} {(mean - base_k) / default_sd:>+9.1f} "
            f"{steps[label][0]:>6}"
        )

    two = run_jobs([Job("default 2 threads", {}, 0, threads=2)], parallel=1)[0]
    one = by_label["default"][0]
    if two.val_bpb is None or one is None:
        print(f"\nthreads: the 2-thread run failed: {two.failure_class} {two.error}")
        return
    print(
        f"\nthreads: seed 0 with 1 thread {one!r}, with 2 threads {two.val_bpb!r} "
        f"(difference {abs(one - two.val_bpb):.2e}); training {two.training_seconds:.1f} s with 2 threads, "
        f"{steps['default'][0]} steps"
    )
    print("  (the other runs above used 1 thread each, 2 at a time)")


if __name__ == "__main__":
    main()
