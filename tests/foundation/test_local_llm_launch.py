"""`launch --local-llm-model` (what `bootstrap.py up --local-llm` runs): the model server is a supervised
child on loopback, everything started after it uses it as the default LLM, and Ctrl-C stops it with the rest.

llama.cpp itself is not installed for the suite (it compiles for minutes); a stand-in `llama_cpp.server`
module on PYTHONPATH takes the same arguments and answers the OpenAI models endpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runs.engine.agents.endpoint_profiles import RedisProfiles, endpoint_key

from .test_launcher import ROOT, descendants, output_until_up, wait_until_gone

pytestmark = pytest.mark.services

STAND_IN = '''
import argparse, json, time
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
for name in ("--model", "--model_alias", "--host", "--port", "--n_ctx", "--n_threads"):
    parser.add_argument(name, required=True)
args = parser.parse_args()


import llama_cpp.llama

REPACK = llama_cpp.llama.llama_cpp.llama_model_default_params().use_extra_bufts


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": args.model_alias, "n_ctx": args.n_ctx, "threads": args.n_threads,
                                     "repack": REPACK}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self):  # the launcher's speed probe: a chat completion, after a moment of "computing"
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.3)
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "A search tunes a model."}}],
                           "usage": {"prompt_tokens": 700, "completion_tokens": 8, "total_tokens": 708}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


HTTPServer((args.host, int(args.port)), Handler).serve_forever()
'''


def test_local_llm_is_supervised_made_the_default_and_stopped_with_everything(tmp_path: Path) -> None:
    package = tmp_path / "fake" / "llama_cpp" / "server"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text(
        "import types\n\ndef llama_model_default_params():\n    return types.SimpleNamespace(use_extra_bufts=True)\n")
    (package.parent / "llama.py").write_text("import llama_cpp\n")  # as the real one: llama_cpp.llama.llama_cpp
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(STAND_IN)
    model = tmp_path / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    model.write_bytes(b"GGUF")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BILEVEL_TEST_SQLITE",
                                                             "LLM_BASE_URL", "LLM_MODEL")}
    env.update(BILEVEL_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(tmp_path / "fake"))
    process = subprocess.Popen(
        [sys.executable, "manage.py", "launch", "--port", str(port), "--no-worker", "--local-llm-model", str(model),
         "--local-llm-threads", "1", "--demo"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output = output_until_up(process)
        found = re.search(r"local LLM (\S+) on (http://127\.0\.0\.1:\d+/v1) \(1 threads, 8192-token context\)", output)
        assert found, output
        alias, url = found.groups()
        assert alias == "qwen2.5-coder-1.5b-instruct-q4_k_m"
        with urllib.request.urlopen(f"{url}/models", timeout=20) as response:
            # served through runs/ops/llm_server.py: weight repacking (AMX) off
            assert json.load(response)["data"][0] == {"id": alias, "n_ctx": "8192", "threads": "1", "repack": False}

        tree = descendants(process.pid)
        web = [pid for pid in tree if b"daphne" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert web, "the web server runs"
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{web[0]}/environ").read_text().split("\0") if "=" in item
        )
        assert (environ["LLM_BASE_URL"], environ["LLM_MODEL"], environ["BILEVEL_DEFAULT_AGENT"]) == (url, alias, "llm")

        # The demo (what `bootstrap.py up --local-llm` starts) runs with the LLM agent, not the built-in one.
        assert f"demo experiment started with the LLM {alias}" in output, output

        # Its speed was measured once, at its start, and is in Redis for every worker's first call.
        assert re.search(r"local LLM measured in \d+ s: \d+ ms per token", output), output
        shared = RedisProfiles((tmp_path / "data" / "redis.url").read_text().strip()).load(endpoint_key(url, alias))
        assert shared is not None and shared.measured_by == "the launcher's probe"
        assert shared.seconds_per_token is not None and shared.seconds_per_token >= 0.3 / 708
        assert shared.cancels_abandoned is False  # llama.cpp's Python server computes abandoned requests

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert wait_until_gone(tree, timeout=30) == set()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
