"""A local server speaking the OpenAI chat completions protocol, for the provider tests.

``FakeOpenAI`` serves ``POST /v1/chat/completions`` on 127.0.0.1 from a thread.
Each request takes the next queued behaviour (``server.queue("status_500",
"status_500", "good")``), else ``server.default``:

* ``good``        a valid plan as JSON content, with token usage
* ``status_429``  / ``status_500``  an error answer with that status
* ``slow``        a good answer, but only after ``server.slow_seconds``
* ``malformed``   content that is not JSON
* ``rule_break``  JSON that breaks the output rules (no modules)

It records every request body and Authorization header in ``server.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

GOOD_PLAN = {
    "modules": [
        {
            "title": f"Module {m}",
            "description": "From the fake model.",
            "estimatedMinutes": 120,
            "tasks": [
                {"title": f"Task {m}.{t}", "description": "Do it.", "estimatedMinutes": 40}
                for t in range(1, 4)
            ],
        }
        for m in range(1, 3)
    ]
}


class FakeOpenAI:
    def __init__(self) -> None:
        self.default = "good"
        self.slow_seconds = 3.0
        self.behaviours: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def queue(self, *behaviours: str) -> None:
        with self._lock:
            self.behaviours.extend(behaviours)

    def _next(self, body: dict[str, Any], authorization: str | None) -> str:
        with self._lock:
            self.requests.append({"body": body, "authorization": authorization})
            return self.behaviours.popleft() if self.behaviours else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                behaviour = fake._next(body, self.headers.get("Authorization"))
                if behaviour.startswith("status_"):
                    status = int(behaviour.removeprefix("status_"))
                    error = {"message": f"fake error {status}", "type": "server_error"}
                    self._send(status, {"error": error})
                    return
                if behaviour == "slow":
                    time.sleep(fake.slow_seconds)
                content = {
                    "malformed": '{"modules": [',
                    "rule_break": json.dumps({"modules": []}),
                }.get(behaviour, json.dumps(GOOD_PLAN))
                self._send(200, completion(body.get("model", "unknown"), content))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("x-request-id", f"req-{len(fake.requests)}")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow case)

        return Handler

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 123, "completion_tokens": 456, "total_tokens": 579},
    }


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """A :class:`FakeOpenAI` running for one test."""
    with FakeOpenAI() as server:
        yield server
