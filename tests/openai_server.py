"""A local server speaking the OpenAI chat completions protocol, for the provider tests.

``FakeOpenAI`` serves ``POST /v1/chat/completions`` on 127.0.0.1 from a thread and
answers the ways real models and servers answer. Each request takes the next
behaviour scripted for its plan's topic (``server.script("Rust", "status_500",
"good")``), else the next queued one (``server.queue(...)``), else ``server.default``:

* ``good``            a valid plan as JSON content, with token usage
* ``fenced``          the plan inside a Markdown ```json fence, with a sentence before
* ``chatty``          the plan with a sentence before and after it, no fence
* ``refusal``         ``content: null`` and a ``refusal`` (as structured outputs refuse)
* ``length``          half a plan with ``finish_reason: "length"`` (hit the output cap)
* ``too_many``        30 modules (the rules allow 12)
* ``numeric_strings`` the plan with every ``estimatedMinutes`` a string (``"40"``)
* ``sse``             a good answer, but streamed as server-sent events (not asked for)
* ``status_<code>``   an error answer with that status and an OpenAI-style message (a 401
  echoes the key it was given, as some servers do); ``status_429@30`` adds
  ``Retry-After: 30``
* ``slow``            a good answer, but only after ``server.slow_seconds`` (``slow@4``: 4 s)
* ``malformed``       content that is not JSON
* ``bad_usage``       a good plan, but token counts no column can keep and a model name
  with a NUL and 300 characters
* ``rule_break``      JSON that breaks the output rules (no modules)
* ``prose``           a sentence with no JSON in it
* ``filtered``        output stopped by the content filter (``finish_reason: "content_filter"``)
* ``priced``          a good plan whose usage carries the server's ``cost`` (OpenRouter) and
  cached prompt tokens (``prompt_tokens_details.cached_tokens``)
* ``body_error_<code>`` HTTP 200 with ``{"error": {"code": <code>, "message": ...}}`` and no
  ``choices`` (OpenRouter's rate limits and upstream failures)
* ``finish_error``    a choice ending with ``finish_reason: "error"`` and the upstream's error
* ``no_usage``        a good plan without ``usage`` (some servers report none)
* ``prompt_filtered`` HTTP 400 with ``error.code: "content_filter"`` (Azure's prompt filter)
* ``out_of_credit``   HTTP 429 with ``error.code: "insufficient_quota"`` (OpenAI, no credit)
* ``long``            a 6-module plan (``LONG_PLAN``, about 800 tokens)
* ``stall``           ``long``, but silent for ``server.stall_seconds`` after
  ``server.stall_after`` tokens
* ``no_stream``       a 400 about ``stream`` when streaming is asked for, else ``good``
* ``plain``           ``good`` as a plain completion even when streaming is asked for

Answers report usage: 123 prompt and 456 completion tokens (a ``length`` answer
``MAX_OUTPUT`` completion tokens, an error answer none).

A request with ``stream: true`` gets its answer as server-sent events, one token
(about 4 characters) per chunk, ``server.tokens_per_second`` of them a second
(``None``: as fast as it can), then the finish reason and, with
``stream_options.include_usage``, a last chunk with the usage. The request's
record counts the tokens written (``sent_tokens``) and notes when a write found
the client gone (``disconnected_at``).

With ``server.supports_json_schema = False`` a request asking for
``response_format: json_schema`` answers 400 (as servers without structured
outputs do) before any behaviour is taken.

With ``server.limit = (N, seconds)`` the server enforces its own rate limit, as
providers do: a request beyond N in any sliding window of that many seconds is
answered 429 with ``Retry-After`` (behaviour ``over_limit``, counted in
``server.rejected``) before any behaviour is taken. ``server.max_in_window(s)``
is the most requests it answered (not rejected) within any ``s`` seconds.

Every request is recorded in ``server.requests`` (body, Authorization header,
topic, the behaviour answered and ``at``, its ``time.monotonic()``);
``server.calls(topic)`` lists those of one plan.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import defaultdict, deque
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
TOO_MANY_MODULES = {"modules": GOOD_PLAN["modules"][:1] * 30}
NUMERIC_STRINGS = {
    "modules": [
        {
            **module,
            "estimatedMinutes": str(module["estimatedMinutes"]),
            "tasks": [
                {**task, "estimatedMinutes": f" {task['estimatedMinutes']} "}
                for task in module["tasks"]
            ],
        }
        for module in GOOD_PLAN["modules"]
    ]
}
LONG_PLAN = {
    "modules": [
        {
            "title": f"Streamed module {m}",
            "description": f"Part {m} of six, written a token at a time by the fake model.",
            "estimatedMinutes": 160,
            "tasks": [
                {
                    "title": f"Streamed task {m}.{t}",
                    "description": "Read, practise, then explain it back in your own words.",
                    "estimatedMinutes": 40,
                }
                for t in range(1, 5)
            ],
        }
        for m in range(1, 7)
    ]
}
REFUSAL = "I'm sorry, but I can't help with that request.\n\x07It breaks the usage policy."
ERROR_MESSAGES = {
    400: "Unsupported parameter: 'frobnicate' is not supported with this model.",
    401: "Incorrect API key provided: {key}. You can find your API key at the dashboard. "
    "(Also seen as {key_cut} and '{key_upper}'.)",
    403: "Project proj_fake does not have access to model {model}.",
    404: "The model `{model}` does not exist or you do not have access to it.",
}
MAX_OUTPUT = 8192
PRICED_COST = 0.00123  # what a "priced" answer says it cost (USD)
PRICED_CACHED = 100
UPSTREAM_MESSAGE = "Upstream provider overloaded: try again later (upstream words)"
_TOPIC = re.compile(r"^Topic: (.*)$", re.MULTILINE)


class FakeOpenAI:
    def __init__(self) -> None:
        self.default = "good"
        self.slow_seconds = 3.0
        self.supports_json_schema = True
        self.tokens_per_second: float | None = None
        self.stall_after = 100
        self.stall_seconds = 5.0
        self.behaviours: deque[str] = deque()
        self.scripts: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[dict[str, Any]] = []
        self.limit: tuple[int, float] | None = None
        self.rejected = 0
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

    def script(self, topic: str, *behaviours: str) -> None:
        """Answer the requests for the plan with this topic with ``behaviours``, in order."""
        with self._lock:
            self.scripts[topic].extend(behaviours)

    def calls(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [request for request in self.requests if request["topic"] == topic]

    def answered(self) -> list[float]:
        """When each request that was not rejected for the rate limit arrived (monotonic)."""
        with self._lock:
            return [r["at"] for r in self.requests if r["behaviour"] != "over_limit"]

    def max_in_window(self, seconds: float) -> int:
        """The most answered requests that arrived within any ``seconds`` of each other."""
        times = sorted(self.answered())
        most, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def _over_limit(self, now: float) -> str | None:
        """``over_limit@<seconds>`` when a request now would pass ``self.limit`` (lock held)."""
        if self.limit is None:
            return None
        count, seconds = self.limit
        recent = [r["at"] for r in self.requests if r["behaviour"] != "over_limit"]
        recent = [at for at in recent if now - at < seconds]
        if len(recent) < count:
            return None
        self.rejected += 1
        return f"over_limit@{math.ceil(recent[-count] + seconds - now)}"

    def _next(self, body: dict[str, Any], authorization: str | None) -> dict[str, Any]:
        messages = body.get("messages") or [{}]
        match = _TOPIC.search(str(messages[-1].get("content", "")))
        topic = match.group(1) if match else None
        wants_schema = (body.get("response_format") or {}).get("type") == "json_schema"
        with self._lock:
            now = time.monotonic()
            over_limit = self._over_limit(now)
            if over_limit:
                behaviour = over_limit
            elif wants_schema and not self.supports_json_schema:
                behaviour = "no_json_schema"
            elif self.scripts.get(topic):
                behaviour = self.scripts[topic].popleft()
            else:
                behaviour = self.behaviours.popleft() if self.behaviours else self.default
            name, _, argument = behaviour.partition("@")
            record = {
                "body": body,
                "authorization": authorization,
                "topic": topic,
                "behaviour": name,
                "argument": argument,
                "at": now,
                "sent_tokens": 0,
                "disconnected_at": None,
            }
            self.requests.append(record)
            return record

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
                authorization = self.headers.get("Authorization")
                record = fake._next(body, authorization)
                behaviour, argument = record["behaviour"], record["argument"]
                model = body.get("model", "unknown")
                if behaviour == "no_json_schema":
                    error = {
                        "message": "Invalid parameter: 'response_format' of type 'json_schema' "
                        "is not supported with this model.",
                        "type": "invalid_request_error",
                        "param": "response_format",
                    }
                    self._send(400, {"error": error})
                elif behaviour == "over_limit":
                    error = {"message": "Rate limit reached for requests", "type": "requests",
                             "code": "rate_limit_exceeded"}  # fmt: skip
                    self._send(429, {"error": error}, {"Retry-After": argument})
                elif behaviour.startswith("status_"):
                    status = int(behaviour.removeprefix("status_"))
                    key = (authorization or "").removeprefix("Bearer ")
                    detail = ERROR_MESSAGES.get(status, "").format(
                        key=key, key_cut=f"{key[:20]}...", key_upper=key.upper(), model=model
                    )
                    error = {"message": f"fake error {status}. {detail}", "type": "server_error"}
                    headers = {"Retry-After": argument} if argument else {}
                    self._send(status, {"error": error}, headers)
                elif behaviour == "prompt_filtered":
                    error = {
                        "message": "The response was filtered due to the prompt triggering "
                        "Azure OpenAI's content management policy.",
                        "type": None,
                        "param": "prompt",
                        "code": "content_filter",
                        "status": 400,
                        "innererror": {"code": "ResponsibleAIPolicyViolation"},
                    }
                    self._send(400, {"error": error})
                elif behaviour == "out_of_credit":
                    error = {
                        "message": "You exceeded your current quota, please check your plan "
                        "and billing details.",
                        "type": "insufficient_quota",
                        "param": None,
                        "code": "insufficient_quota",
                    }
                    self._send(429, {"error": error})
                elif behaviour.startswith("body_error_"):
                    code = int(behaviour.removeprefix("body_error_"))
                    error = {"code": code, "message": UPSTREAM_MESSAGE, "metadata": {"raw": "x"}}
                    self._send(200, {"error": error, "id": "gen-fake", "model": model})
                elif behaviour == "sse":
                    self._stream(model, json.dumps(GOOD_PLAN))
                elif behaviour == "no_stream" and body.get("stream"):
                    error = {
                        "message": "Streaming is not supported by this server.",
                        "type": "invalid_request_error",
                        "param": "stream",
                    }
                    self._send(400, {"error": error})
                elif behaviour == "plain":
                    self._send(200, answer(model, "good"))
                else:
                    if behaviour == "slow":  # "slow@4": 4 s instead of server.slow_seconds
                        time.sleep(float(argument or fake.slow_seconds))
                    answered = answer(model, behaviour)
                    if body.get("stream"):
                        usage = (body.get("stream_options") or {}).get("include_usage")
                        self._stream_answer(answered, record, stall=behaviour == "stall")
                        if usage and "usage" in answered:
                            self._event(
                                {**_chunk(answered, {}), "choices": [], "usage": answered["usage"]},
                                record,
                            )
                        self._event("[DONE]", record)
                    else:
                        self._send(200, answer(model, behaviour))

            def _stream_answer(
                self, answered: dict[str, Any], record: dict[str, Any], stall: bool
            ) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                choice = answered["choices"][0]
                message = choice["message"]
                field = "refusal" if message.get("refusal") else "content"
                text = message.get(field) or ""
                pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
                self._event(_chunk(answered, {"role": "assistant", "content": ""}), record)
                started = time.monotonic()
                for number, piece in enumerate(pieces):
                    if fake.tokens_per_second:  # paced from the start: no drift under load
                        wait = started + number / fake.tokens_per_second - time.monotonic()
                        time.sleep(max(wait, 0))
                    if stall and number == fake.stall_after:
                        time.sleep(fake.stall_seconds)
                        started += fake.stall_seconds
                    if not self._event(_chunk(answered, {field: piece}), record):
                        return
                    record["sent_tokens"] += 1
                ending = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
                if "error" in choice:  # OpenRouter's upstream error rides on the last chunk
                    ending["error"] = choice["error"]
                finish = {**_chunk(answered, {}), "choices": [ending]}
                self._event(finish, record)

            def _event(self, event: Any, record: dict[str, Any]) -> bool:
                """Write one server-sent event; ``False`` once the client has gone."""
                data = event if isinstance(event, str) else json.dumps(event)
                if record["disconnected_at"] is not None:
                    return False
                try:
                    self.wfile.write(f"data: {data}\n\n".encode())
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    record["disconnected_at"] = time.monotonic()
                    return False
                return True

            def _stream(self, model: str, content: str) -> None:
                chunks = [content[i : i + 40] for i in range(0, len(content), 40)]
                events = [
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "delta": {"content": chunk}}],
                    }
                    for chunk in chunks
                ]
                data = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
                self._write(200, (data + "data: [DONE]\n\n").encode(), "text/event-stream", {})

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._write(status, json.dumps(payload).encode(), "application/json", headers or {})

            def _write(
                self, status: int, data: bytes, content_type: str, headers: dict[str, str]
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("x-request-id", f"req-{len(fake.requests)}")
                    for name, value in headers.items():
                        self.send_header(name, value)
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


def answer(model: str, behaviour: str) -> dict[str, Any]:
    """The completion a model answering with ``behaviour`` sends."""
    plan = json.dumps(GOOD_PLAN, indent=2)
    content: str | None = {
        "fenced": f"Here is the plan you asked for:\n\n```json\n{plan}\n```\n",
        "chatty": f"Sure! {json.dumps(GOOD_PLAN)} Let me know if you want changes.",
        "length": plan[: len(plan) // 2],
        "too_many": json.dumps(TOO_MANY_MODULES),
        "numeric_strings": json.dumps(NUMERIC_STRINGS),
        "malformed": '{"modules": [',
        "rule_break": json.dumps({"modules": []}),
        "prose": "I would love to help you learn this, but I will answer in prose today.",
        "filtered": plan[:40],
        "finish_error": plan[:40],
        "refusal": None,
        "long": json.dumps(LONG_PLAN),
        "stall": json.dumps(LONG_PLAN),
    }.get(behaviour, json.dumps(GOOD_PLAN))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if behaviour == "refusal":
        message["refusal"] = REFUSAL
    finish_reason = {"length": "length", "filtered": "content_filter", "finish_error": "error"}
    answered = completion(model, message, finish_reason.get(behaviour, "stop"))
    if behaviour == "length":
        answered["usage"]["completion_tokens"] = MAX_OUTPUT
    if behaviour == "finish_error":
        answered["choices"][0]["error"] = {"code": 502, "message": UPSTREAM_MESSAGE}
    if behaviour == "no_usage":
        del answered["usage"]
    if behaviour == "priced":
        answered["usage"]["cost"] = PRICED_COST
        answered["usage"]["prompt_tokens_details"] = {"cached_tokens": PRICED_CACHED}
    if behaviour == "bad_usage":
        answered["model"] = "m\x00" + "x" * 300
        answered["usage"] = {"prompt_tokens": "x", "completion_tokens": 10**30}
    return answered


def _chunk(answered: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": answered["id"],
        "object": "chat.completion.chunk",
        "created": answered["created"],
        "model": answered["model"],
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def completion(model: str, message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": {"prompt_tokens": 123, "completion_tokens": 456, "total_tokens": 579},
    }


def provider_config(server: FakeOpenAI, model: str = "fake-model", **config: Any) -> dict[str, Any]:
    """App config for the OpenAI provider against ``server``: no backoff, no rate limit in
    the way, a 5 s timeout; ``config`` adds or overrides keys."""
    return {
        "PLAN_REGEN_PROVIDER": "flask_plan_regen.openai_provider:OpenAIProvider",
        "PLAN_REGEN_PROVIDER_BASE_URL": server.base_url,
        "PLAN_REGEN_PROVIDER_API_KEY": "sk-test-fake-0123456789-secret",
        "PLAN_REGEN_PROVIDER_MODEL": model,
        "PLAN_REGEN_PROVIDER_TIMEOUT": 5.0,
        "PLAN_REGEN_RETRY_BACKOFF_BASE": 0,
        "PLAN_REGEN_RATE_LIMIT": "1000/hour",
        **config,
    }


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """A :class:`FakeOpenAI` running for one test."""
    with FakeOpenAI() as server:
        yield server
