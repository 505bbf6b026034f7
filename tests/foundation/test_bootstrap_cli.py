"""`bootstrap.py`: every command answers --help and -h with its usage and changes nothing on disk; a long
set-up step (pip compiling llama.cpp) says every few seconds how long it has run and what it is building."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bootstrap

ROOT = Path(bootstrap.__file__).resolve().parent
# What a fresh clone has that bootstrap.py reads or writes beside: requirement files, package.json, bench/run.py.
COPIED = ["bootstrap.py", "package.json", "manage.py", "bench/run.py",
          *(path.name for path in ROOT.glob("requirements*.txt"))]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below `folder` with its size and modification time (ns): any write shows."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    for name in COPIED:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    return clone


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"],
    ["up", "--help"], ["up", "-h"], ["up", "--local-llm", "--help"], ["up", "--port", "9000", "-h"],
    ["test", "--help"], ["test", "-h"], ["test", "-x", "tests/foundation", "--help"],
    ["bench", "--help"], ["bench", "-h"], ["bench", "overhead", "-h"],
])
def test_help_prints_the_usage_and_changes_nothing(fresh_clone: Path, argv: list[str]) -> None:
    before = tree(fresh_clone)
    result = subprocess.run([sys.executable, "bootstrap.py", *argv], cwd=fresh_clone, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = argv[0] if argv[0] in ("up", "test", "bench") else ""
    assert result.stdout.startswith(f"usage: python3 bootstrap.py {command}".rstrip()), result.stdout
    assert "[bootstrap]" not in result.stdout  # no set-up step started
    assert tree(fresh_clone) == before
    assert not (fresh_clone / ".venv").exists() and not (fresh_clone / ".venv-llm").exists()


def test_each_command_says_what_it_takes(fresh_clone: Path) -> None:
    def usage(*argv: str) -> str:
        return subprocess.run([sys.executable, "bootstrap.py", *argv, "-h"], cwd=fresh_clone, capture_output=True,
                              text=True, timeout=60, check=True).stdout

    assert "--local-llm" in usage("up") and "--port" in usage("up")
    assert "pytest" in usage("test")
    assert "live_latency" in usage("bench")  # the benchmark names, read from bench/run.py without importing it


@pytest.mark.parametrize("argv, message", [
    (["up", "--loca-llm"], "unrecognized arguments: --loca-llm"),
    (["bench"], "bench needs a NAME"),
    (["nothing"], "invalid choice: 'nothing'"),
    ([], "required: COMMAND"),
])
def test_bad_arguments_stop_before_installing(fresh_clone: Path, argv: list[str], message: str) -> None:
    before = tree(fresh_clone)
    result = subprocess.run([sys.executable, "bootstrap.py", *argv], cwd=fresh_clone, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert tree(fresh_clone) == before


def test_up_passes_its_launch_options_on() -> None:
    options = bootstrap.parse_command(["up", "--port", "9000", "--no-worker", "--local-llm-threads", "3"])
    assert bootstrap.launch_arguments(options) == ["--port", "9000", "--local-llm-threads", "3", "--no-worker"]
    assert bootstrap.parse_command(["test", "-x", "-k", "not slow"]).passed_on == ["-x", "-k", "not slow"]
    bench = bootstrap.parse_command(["bench", "overhead", "iterations=3"])
    assert (bench.name, bench.passed_on) == ("overhead", ["iterations=3"])


FAKE_SLOW_BUILD = textwrap.dedent("""
    import sys, time
    print("Processing ./llama-cpp-python", flush=True)
    time.sleep(1.0)
    print("[ 42%] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/llama.cpp.o", flush=True)
    time.sleep(2.5)  # a long silent compile of one file
    print("  -- still linking", flush=True)
    time.sleep(1.0)
    sys.exit(int(sys.argv[1]))
""")


def heartbeat_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[bootstrap] compiling: ")
            and "done in" not in line]


def test_a_slow_build_streams_a_heartbeat_with_elapsed_time_and_the_build_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "fake_build.py"
    script.write_text(FAKE_SLOW_BUILD)
    log = tmp_path / "logs" / "build.log"
    bootstrap.run_with_heartbeat([sys.executable, script, "0"], "compiling", log, every=0.4)
    lines = heartbeat_lines(capsys.readouterr().out)
    # 4.5 s of building at one line per 0.4 s; far fewer would mean the heartbeat waited on the build's output.
    assert len(lines) >= 6, lines
    during_silence = [line for line in lines if "[ 42%]" in line]
    assert len(during_silence) >= 3, lines  # the step stays shown while the compiler is silent
    assert all(line.split(": ")[1].endswith(" s; [ 42%] Building CXX object vendor/llama.cpp/src/CMakeFiles/"
                                            "llama.dir/llama.cpp.o") for line in during_silence)
    assert "Processing ./llama-cpp-python" in lines[0] or "no output yet" in lines[0]
    assert log.read_text().splitlines() == ["Processing ./llama-cpp-python",
                                            "[ 42%] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/"
                                            "llama.cpp.o", "  -- still linking"]


def test_the_heartbeat_interval_is_at_most_ten_seconds_and_a_failed_build_names_its_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bootstrap.HEARTBEAT_SECONDS <= 10
    script = tmp_path / "fake_build.py"
    script.write_text(FAKE_SLOW_BUILD)
    log = tmp_path / "build.log"
    with pytest.raises(SystemExit, match=f"compiling failed after .* \\(exit code 3\\); the whole output is in {log}"):
        bootstrap.run_with_heartbeat([sys.executable, script, "3"], "compiling", log, every=5)
    assert "[ 42%] Building CXX object" in capsys.readouterr().err  # the log's tail, shown at once


def test_download_progress_counts_the_bytes_in_pips_download_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    grow = textwrap.dedent(f"""
        import time
        with open({str(downloads / 'pip-unpack-x' / 'part1.whl')!r}, "wb") as handle:
            handle.write(b"x" * 3_000_000)
            handle.flush()
            time.sleep(1.5)
    """)
    (downloads / "pip-unpack-x").mkdir()
    bootstrap.run_with_heartbeat([sys.executable, "-c", grow], "downloading", tmp_path / "d.log", every=0.3,
                                 progress=lambda: f"{bootstrap.bytes_under(downloads) / bootstrap.MB:,.0f} MB")
    out = capsys.readouterr().out
    assert "[bootstrap] downloading: " in out and "; 3 MB; " in out
