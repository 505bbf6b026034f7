"""Same config + seed + compute budget -> identical val_bpb, whatever the machine load.

Runs the default cpu-tiny config (seed 0, default FLOP budget, 1 thread) through the real
launcher: once alone, then once while a second, different training competes for the CPU, then
with a different seed (which must differ). Prints the values and whether they are bit-identical.

    .venv/bin/python bench/trainer_reproducibility.py
"""

from __future__ import annotations

from trainer_common import DEFAULT_FLOPS, Job, run_jobs


def main() -> None:
    alone = run_jobs([Job("default", {}, seed=0)], parallel=1)[0]
    loaded, _competitor = run_jobs([Job("default", {}, seed=0), Job("competing load", {"MATRIX_LR": 0.04}, seed=5)])
    other_seed = run_jobs([Job("default", {}, seed=1)], parallel=1)[0]
    rows = [("seed 0, alone", alone), ("seed 0, under load", loaded), ("seed 1, alone", other_seed)]
    print(f"\ndefault cpu-tiny config, {DEFAULT_FLOPS:g} FLOPs, 1 thread")
    print(f"{'run':<22} {'val_bpb':>20} {'steps':>6} {'train s':>8}")
    for name, summary in rows:
        print(f"{name:<22} {summary.val_bpb!r:>20} {summary.steps:>6} {summary.training_seconds:>8.1f}")
    identical = alone.val_bpb == loaded.val_bpb
    print(f"\nseed 0 alone vs under load: {'bit-identical' if identical else 'DIFFERENT'}")
    print(f"seed 0 vs seed 1 differ by {abs((alone.val_bpb or 0) - (other_seed.val_bpb or 0)):.4f}")


if __name__ == "__main__":
    main()
