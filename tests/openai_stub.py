"""A real HTTP server speaking the OpenAI chat-completions protocol, with scripted replies.

Each scripted reply is one of: {"content": "..."} (a normal completion; with "finish_reason": "length",
one cut off at max_tokens), {"status": 429} (or
any error status, with an optional "body"), {"hang": seconds} (answers after the client gave
up), {"gate": threading.Event()} (answers once the test sets it: a reply in flight for as long as the test
looks at it), or {"close": True} (drops the connection). Requests are recorded for assertions.

`one_at_a_time` makes it serve as llama.cpp's Python server does: one request at a time, each computed to
its end even when its client has gone, so a request sent meanwhile waits its turn.

`refuse_formats` makes the server refuse response_format types as a given backend does, on every
request and without using up a scripted reply: e.g. {"json_schema": 500} answers like llama.cpp's
server to a schema it cannot turn into a grammar.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedOpenAI:
    def __init__(self, one_at_a_time: bool = False) -> None:
        self.script: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.refuse_formats: dict[str, int] = {}
        self.instance = secrets.token_hex(6)
        self.slot = threading.Lock() if one_at_a_time else contextlib.nullcontext()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                with stub.slot:
                    self._answer(body)

            def _answer(self, body: dict[str, Any]) -> None:
                refused = stub.refuse_formats.get(body.get("response_format", {}).get("type", ""))
                if refused:
                    message = "response_format: failed to compile the JSON schema into a grammar"
                    self._send(refused, {"error": {"message": message, "type": "server_error"}})
                    return
                step = stub.script.pop(0) if stub.script else {"status": 500, "body": {"error": "script exhausted"}}
                if step.get("close"):
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if "hang" in step:
                    stub.release.wait(step["hang"])
                if "gate" in step:
                    step["gate"].wait(120)
                if "status" in step:
                    self._send(step["status"], step.get("body", {"error": {"message": "scripted error"}}))
                    return
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": step.get("finish_reason", "stop"),
                                "message": {"role": "assistant", "content": step.get("content")},
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        # A path of its own: what clients learn about an endpoint is shared through Redis by URL, and a port
        # can come back in a later test (or test session) as another stub.
        return f"http://127.0.0.1:{self.server.server_address[1]}/stub-{self.instance}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def scripted_openai() -> Iterator[ScriptedOpenAI]:
    stub = ScriptedOpenAI()
    yield stub
    stub.close()
