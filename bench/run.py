"""The system benchmarks' runner: `python3 bootstrap.py bench NAME|all [key=value ...]`.

    overhead             orchestration overhead per iteration on the real trainer, and where it goes
    live_latency         worker publishes an iteration event -> the run page's DOM shows it (Chromium)
    ws_load              50 WebSocket clients on one run's socket during a surrogate run
    dashboard_scale      page server times and sizes for an experiment of 50 runs x 30 iterations
    ablation_throughput  a surrogate ablation with 1 and 2 train workers
    sandbox              mechanism host start-up and hook-call latency, before and after kernel isolation
    surrogate_ablation   the ablation's Table 2 on the surrogate: search and confirmed Δ, tests per pair
    mechanism_credit     the catalogue mechanisms' counterfactual credit over a C/D surrogate ablation

Each prints a table and replaces its section of bench/RESULTS.md. Options (key=value) are
passed to the benchmark (see each bench_NAME.py). "all" runs each in its own process. The
database is a fresh SQLite file; with BENCH_DATABASE_URL=postgres://user@host:port it is a
fresh PostgreSQL database on that server (created and dropped), reported in its own section.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import bench_env, machine, print_table, write_results

BENCHMARKS = ("overhead", "live_latency", "ws_load", "dashboard_scale", "ablation_throughput", "sandbox",
              "surrogate_ablation", "mechanism_credit")


def run_one(name: str, options: dict[str, str]) -> None:
    machine_text = machine()
    module = importlib.import_module(f"bench_{name}")
    started = time.monotonic()
    with bench_env(name) as env:
        report = module.run(env, options)
        database = env.database
    if database == "PostgreSQL":  # its own section beside the embedded default's
        report.name += "-postgresql"
        report.title += " (PostgreSQL)"
        report.command = f"BENCH_DATABASE_URL=postgres://... {report.command}"
    print(f"\n== {report.title} ({time.monotonic() - started:.0f} s) ==")
    print(f"machine: {machine_text}; database: {database}")
    if report.setup:
        print(report.setup)
    print_table(report.headers, report.rows)
    for caption, headers, rows in report.extra_tables:
        print(f"\n{caption}")
        print_table(headers, rows)
    for description, met in report.targets:
        print(f"target: {description}: {'n/a' if met is None else ('met' if met else 'MISSED')}")
    for note in report.notes:
        print(f"note: {note}")
    write_results(report, machine_text, database)
    print(f"(written to bench/RESULTS.md, section {report.name})")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*BENCHMARKS, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    options = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
    if argv[0] != "all":
        run_one(argv[0], options)
        return 0
    failed = [name for name in BENCHMARKS
              if subprocess.run([sys.executable, __file__, name, *argv[1:]], check=False).returncode != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
