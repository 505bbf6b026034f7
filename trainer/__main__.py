"""``python -m trainer``: one training run, JSON lines on stdout, exit code = failure class.

    python -m trainer --config config.json --preset cpu-tiny --budget-kind flops --budget 1.5e12 \\
        --seed 0 --threads 2 [--workdir DIR]

stdout carries only JSON lines: ``{"type": "progress", ...}`` while training and exactly one
``{"type": "summary", ...}`` at the end (also written to ``DIR/summary.json``). Exit codes are
``trainer.outcomes.EXIT_CODES``. The config is validated before torch is imported, so an invalid
config fails in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from trainer.budget import BUDGET_KINDS, DETERMINISTIC_CHOICES, check_budget
from trainer.corpus import CORPUS_VERSION
from trainer.corpus_dir import CorpusDirError, corpus_files
from trainer.outcomes import CORPUS_PACKAGE, EXIT_CODES
from trainer.schema import DEFAULT_PRESET, PRESETS, ConfigError, config_to_json, validate_config

# Test-only fault injection (never set in production): "hang" spawns a grandchild in the same
# process group and then blocks forever, so tests can check the launcher's group kill;
# "exit-without-summary" dies like a segfaulting process would, leaving only stderr behind;
# "garbage" writes non-JSON lines to stdout first, as a chatty library might.
TEST_HOOK_ENV = "BILEVEL_TRAINER_TEST_HOOK"
HANG_PID_FILE = "hang_grandchild.pid"


class _ArgumentParser(argparse.ArgumentParser):
    """Reports command-line errors as an invalid_config summary instead of argparse's exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"bad command line: {message}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(prog="python -m trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="JSON file with the knob values")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--budget-kind", default="flops", help=f"one of {', '.join(BUDGET_KINDS)}")
    parser.add_argument("--budget", type=float, required=True, help="FLOPs or seconds of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="if given, summary.json is also written there")
    parser.add_argument(
        "--deterministic",
        default="auto",
        choices=DETERMINISTIC_CHOICES,
        help="CUDA: deterministic kernels (auto = on for FLOP budgets); CPU is always deterministic",
    )
    parser.add_argument(
        "--corpus-dir", default=None, help="train on this directory's .txt / .parquet text (trainer.corpus_dir)"
    )
    return parser.parse_args(argv)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged run's losses become null instead of breaking the summary line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(finite_or_none(line), allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def run_test_hook(hook: str, workdir: Path) -> None:
    if hook == "hang":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        (workdir / HANG_PID_FILE).write_text(str(grandchild.pid))
        emit(
            {
                "type": "progress",
                "step": 0,
                "tokens": 0,
                "train_loss": None,
                "lr": 0.0,
                "elapsed": 0.0,
                "budget_fraction": 0.0,
                "test_hook": "hang",
            }
        )
        time.sleep(3600)
    if hook == "garbage":
        print("a stray line from some library")
        print("{not json either")
    if hook == "exit-without-summary":
        sys.stderr.write("simulated fatal error: the process died without a summary\n")
        sys.stderr.flush()
        os._exit(EXIT_CODES["crashed"])


def prepare_environment() -> None:
    """Variables that must be set before torch loads (here, or in the warm zygote before its imports)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS
    # OpenMP threads that spin while waiting are ruinous on a shared machine: with 2 threads on 2 busy
    # cores a run measured 5x slower than with sleeping waits (same val_bpb either way). Must be set
    # before torch (and its OpenMP runtime) loads; a caller's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        emit(
            {
                "type": "summary",
                "objective": "trainer",
                "val_bpb": None,
                "failure_class": "invalid_config",
                "error": str(exc),
            }
        )
        return EXIT_CODES["invalid_config"]
    workdir: Path | None = args.workdir
    prepare_environment()
    base: dict[str, Any] = {
        "type": "summary",
        "objective": "trainer",
        "corpus": f"{CORPUS_PACKAGE}=={CORPUS_VERSION}",
        "preset": args.preset,
        "budget_kind": args.budget_kind,
        "budget_value": args.budget,
        "seed": args.seed,
        "threads": args.threads,
    }
    if hook := os.environ.get(TEST_HOOK_ENV):
        run_test_hook(hook, workdir or Path.cwd())

    summary: dict[str, Any]
    try:
        raw = json.loads(Path(args.config).read_text())
        config = validate_config(raw, preset=args.preset)
        check_budget(config, args.preset, args.budget_kind, args.budget)
        if args.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {args.threads}")
        if args.corpus_dir is not None:
            corpus_files(Path(args.corpus_dir))
    except (OSError, json.JSONDecodeError, ConfigError, CorpusDirError) as exc:
        summary = base | {"val_bpb": None, "failure_class": "invalid_config", "error": str(exc)}
    else:
        from trainer.train import run  # imports torch: only once the config is known to be valid

        base["config"] = config_to_json(config)
        summary = base | run(
            config,
            preset=args.preset,
            budget_kind=args.budget_kind,
            budget_value=args.budget,
            seed=args.seed,
            threads=args.threads,
            emit=emit,
            corpus_dir=args.corpus_dir,
            deterministic=args.deterministic,
        )
    emit(summary)
    if workdir is not None:
        try:
            (workdir / "summary.json").write_text(json.dumps(finite_or_none(summary), indent=2, default=str) + "\n")
        except OSError as exc:
            sys.stderr.write(f"could not write summary.json: {exc}\n")
    return EXIT_CODES[summary["failure_class"]]


if __name__ == "__main__":
    sys.exit(main())
