"""ws_load: many WebSocket clients on one run's socket while a surrogate run proceeds.

`clients` (50) authenticated sockets connect to /ws/runs/<id>/ on the real ASGI server (daphne),
then a surrogate run of `iterations` (100) proposals is stepped by a real Celery worker. Every
client must receive every iteration event (checked against the Iteration rows) and the final
status. The server's CPU time and memory come from /proc/<pid>/stat and status.
Options: clients=50, iterations=100.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from bench_common import BenchEnv, ProcSample, Report, make_user, proc_sample, session_cookie, summary_stats, tree_pids


class Clients:
    def __init__(self, url: str, cookie: str, count: int) -> None:
        self.url, self.cookie, self.count = url, cookie, count
        self.received: list[list[tuple[str, Any, float]]] = [[] for _ in range(count)]
        self.connected = threading.Event()
        self.failed: list[str] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    async def main(self) -> None:
        import websockets

        ready = 0

        async def client(number: int) -> None:
            nonlocal ready
            headers = {"Cookie": f"sessionid={self.cookie}", "Origin": self.url.replace("ws://", "http://")}
            try:
                async with websockets.connect(self.url, additional_headers=headers, open_timeout=30,
                                              max_queue=None) as socket:
                    ready += 1
                    if ready == self.count:
                        self.connected.set()
                    while True:
                        message = json.loads(await asyncio.wait_for(socket.recv(), timeout=300))
                        now = time.monotonic()
                        key = message.get("iteration", {}).get("index") if message["type"] == "iteration" else \
                            message.get("status")
                        self.received[number].append((message["type"], key, now))
                        if message["type"] == "status" and message.get("status") in ("completed", "failed"):
                            return
            except Exception as error:  # reported, and the run's check fails
                self.failed.append(f"client {number}: {type(error).__name__}: {error}")
                self.connected.set()

        await asyncio.gather(*(client(n) for n in range(self.count)))


def run(env: BenchEnv, options: dict[str, str]) -> Report:
    from runs.engine import control
    from runs.engine.control import create_runs
    from runs.models import Experiment, Iteration

    count = int(options.get("clients", 50))
    iterations = int(options.get("iterations", 100))
    user = make_user()
    experiment = Experiment.objects.create(name="ws load", groups=["B"], iterations=iterations, strategy_interval=10,
                                           objective="surrogate", budget_value=1.5e12, created_by=user)
    run_row = create_runs(experiment)[0]
    server, url = env.start_asgi()
    worker = env.start_worker("ws-load-worker", "train,research,default")
    clients = Clients(f"{url.replace('http://', 'ws://')}/ws/runs/{run_row.pk}/", session_cookie(user), count)
    clients.thread.start()
    if not clients.connected.wait(120) or clients.failed:
        raise RuntimeError(f"clients did not connect: {clients.failed[:3]}")

    idle_start = proc_sample(server.process.pid)
    time.sleep(2.0)  # a measurement window: the server's idle cost with every client connected
    idle_end = proc_sample(server.process.pid)

    samples: list[ProcSample] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(proc_sample(server.process.pid))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    worker_before = sum(proc_sample(pid).cpu_seconds for pid in tree_pids(worker.process.pid))
    started = time.monotonic()
    sampler.start()
    control.start_experiment(experiment)
    clients.thread.join(timeout=600)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    end = proc_sample(server.process.pid)
    worker_cpu = sum(proc_sample(pid).cpu_seconds for pid in tree_pids(worker.process.pid)) - worker_before

    run_row.refresh_from_db()
    expected = set(Iteration.objects.filter(run=run_row).values_list("index", flat=True))
    complete = 0
    spreads: dict[Any, list[float]] = {}
    for events in clients.received:
        got = {key for kind, key, _ in events if kind == "iteration"}
        finished = any(kind == "status" and key == "completed" for kind, key, _ in events)
        complete += got == expected and finished
        for kind, key, at in events:
            if kind == "iteration":
                spreads.setdefault(key, []).append(at)
    fanout = [(max(times) - min(times)) * 1000 for times in spreads.values() if len(times) == count]
    messages = sum(len(events) for events in clients.received)
    server_cpu = end.cpu_seconds - samples[0].cpu_seconds if samples else float("nan")
    idle_cpu = (idle_end.cpu_seconds - idle_start.cpu_seconds) / (idle_end.at - idle_start.at)
    rows = [
        ["clients connected / receiving every event", f"{count} / {complete}"],
        ["run", f"{run_row.status}, {len(expected)} iterations ({iterations} proposals, group B) in {wall:.1f} s"],
        ["messages delivered (all clients)", f"{messages} ({messages / wall:.0f}/s)"],
        ["daphne CPU during the run", f"{server_cpu:.2f} s = {100 * server_cpu / wall:.0f}% of one core"],
        ["daphne CPU idle, all clients connected", f"{100 * idle_cpu:.1f}% of one core"],
        ["daphne CPU per delivered message", f"{1000 * server_cpu / max(messages, 1):.2f} ms"],
        ["daphne memory (RSS now / peak)", f"{end.rss_mb:.0f} MB / {end.peak_rss_mb:.0f} MB"],
        ["fan-out spread (last − first client) p50 / p95", "{:.1f} ms / {:.1f} ms".format(*summary_stats(fanout)[:2])],
        ["worker CPU during the run", f"{worker_cpu:.1f} s = {100 * worker_cpu / wall:.0f}% of one core"],
    ]
    if clients.failed:
        rows.append(["client errors", "; ".join(clients.failed[:3])])
    return Report(
        name="ws_load",
        title=f"ws_load: {count} WebSocket clients on one run",
        command=f"python3 bootstrap.py bench ws_load clients={count} iterations={iterations}",
        setup=("One daphne process, Redis channel layer, one Celery worker stepping a surrogate run; the clients are "
               "Python `websockets` in the benchmark process (their CPU is not the server's)."),
        headers=["measure", "value"],
        rows=rows,
        targets=[(f"every client receives every event: {complete} of {count}", complete == count)],
    )
