"""The chat completion call of openai_provider.py, streamed.

The answer is asked for with ``stream=True`` and ``stream_options:
{"include_usage": true}`` (the last chunk then carries the token counts) and
assembled here into the ``ChatCompletion`` the plain call would have
returned, so that the provider classes both the same way. Along the way each
chunk passes the attempt's checkpoints (a cancel or a passed time limit cuts
the connection: the server stops generating, and billing), and each module is
handed to ``request.module_ready`` as soon as it is complete (module_stream.py).

A server that cannot stream gets the plain call, remembered for the process
per (base URL, model) as for ``json_schema``: one that refuses ``stream``
with a 400, or answers a plain completion (which is used as it is: no second
call is paid for).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import openai
from openai import Stream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .checkpoints import Checkpoints
from .errors import ProviderError
from .module_stream import ModuleStream
from .providers import GenerationRequest

logger = logging.getLogger("flask_plan_regen.openai_provider")

# (base URL, model) pairs that cannot stream: called plainly for the rest of this process.
_WITHOUT_STREAM: set[tuple[str, str]] = set()


class Connections:
    """The sockets one call's client opens (a client per call: its pool is the call's
    own), so that the checkpoints' thread can cut a call still waiting for the response
    headers: a server may hold them until its first token."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []

    def event_hooks(self) -> dict[str, list[Callable[[Any], None]]]:
        """The SDK's HTTP client's hooks that trace each request's new connections (the
        ``trace`` request extension of httpx and httpcore)."""
        return {"request": [self._trace_request]}

    def _trace_request(self, request: Any) -> None:
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if isinstance(sock, socket.socket):
                self._sockets.append(sock)

    def cut(self) -> None:
        """Shut the call's sockets down: a read blocked on one returns at once."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def create(
    client: openai.OpenAI,
    connections: Connections,
    request: GenerationRequest,
    *,
    stream: bool,
    **params: Any,
) -> Any:
    """``client.chat.completions.create(**params)``, streamed unless the server cannot."""
    server = (str(client.base_url), str(params["model"]))
    checkpoints = request.checkpoints
    if not stream or server in _WITHOUT_STREAM:
        return _plain(client, checkpoints, params)
    try:
        # A cancel or the first-token limit also cuts the wait for the headers.
        with checkpoints.watching(close=connections.cut):
            raw = client.chat.completions.with_raw_response.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
    except openai.BadRequestError as error:
        if "stream" not in f"{error.param or ''} {error.message}".lower():
            raise
        _remember(server, f"it refused stream (HTTP 400: {error.code or error.type})")
        return _plain(client, checkpoints, params)
    content_type = raw.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        _remember(server, f"it answered {content_type or 'without a content type'}")
        completion = _plain_answer(raw.http_response)
        _note_usage(checkpoints, completion)
        checkpoints.check()
        return completion
    return _assemble(raw.parse(), request, str(params["model"]))


def _plain(client: openai.OpenAI, checkpoints: Checkpoints, params: dict[str, Any]) -> Any:
    completion = client.chat.completions.create(**params)
    _note_usage(checkpoints, completion)
    checkpoints.check()  # canceled meanwhile: recorded as such, with the call's tokens
    return completion


def _plain_answer(response: Any) -> Any:
    """A plain answer as the SDK's plain call reads it: leniently into a ``ChatCompletion``
    when it is JSON, else its text (which the provider then explains)."""
    response.read()  # asked as a stream: the body is not read yet
    try:
        data = response.json()
    except ValueError:
        return response.text
    return ChatCompletion.construct(**data) if isinstance(data, dict) else response.text


def _remember(server: tuple[str, str], why: str) -> None:
    _WITHOUT_STREAM.add(server)
    logger.warning(
        "%s at %s cannot stream (%s): calling it without streaming from now on in this "
        "process; set PLAN_REGEN_PROVIDER_STREAM = False to skip the attempt",
        server[1],
        server[0],
        why,
    )


def _note_usage(checkpoints: Checkpoints, completion: Any) -> None:
    usage = getattr(completion, "usage", None)
    checkpoints.record_usage(
        getattr(completion, "model", None),
        getattr(usage, "prompt_tokens", None),
        getattr(usage, "completion_tokens", None),
    )


def _assemble(
    stream: Stream[ChatCompletionChunk], request: GenerationRequest, model: str
) -> ChatCompletion:
    """Read the stream to its end, through the checkpoints; the completion it amounts to."""
    checkpoints = request.checkpoints
    modules = ModuleStream()
    content: list[str] = []
    refusal: list[str] = []
    first: ChatCompletionChunk | None = None
    finish_reason: str | None = None
    usage: Any = None
    ending: dict[str, Any] = {}
    try:
        with checkpoints.watching(close=lambda: _cut(stream)):
            for chunk in _chunks(stream, model):
                first = first or chunk
                choice = chunk.choices[0] if chunk.choices else None
                delta = choice.delta if choice else None
                piece = (delta.content or "") if delta else ""
                checkpoints.chunk(tokens=1 if piece or (delta and delta.refusal) else 0)
                if chunk.usage is not None:
                    usage = chunk.usage
                    checkpoints.record_usage(
                        chunk.model, usage.prompt_tokens, usage.completion_tokens
                    )
                if delta is not None and delta.refusal:
                    refusal.append(delta.refusal)
                if piece:
                    content.append(piece)
                    for index, module in modules.feed(piece):
                        request.module_ready(index, module)
                if choice is not None and choice.finish_reason:
                    finish_reason = choice.finish_reason
                    # What a server adds to the ending choice (OpenRouter's upstream error).
                    ending = dict(choice.model_extra or {})
    finally:
        stream.close()
    if finish_reason in (None, "stop"):
        for index, module in modules.finish():
            request.module_ready(index, module)
    return ChatCompletion.construct(
        id=first.id if first else "",
        object="chat.completion",
        created=first.created if first else 0,
        model=(first.model if first else None) or model,
        choices=[
            {
                **ending,
                "index": 0,
                "finish_reason": finish_reason,
                "message": {
                    "role": "assistant",
                    "content": "".join(content) or None,
                    "refusal": "".join(refusal) or None,
                },
            }
        ],
        usage=usage,
    )


def _chunks(stream: Stream[ChatCompletionChunk], model: str) -> Iterator[ChatCompletionChunk]:
    """The stream's chunks; a connection that breaks mid-answer is a ``provider_error``."""
    chunks = iter(stream)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except openai.OpenAIError:  # an error event in the stream: classed by the provider
            raise
        except Exception as error:  # the HTTP library's own (its name depends on the SDK)
            raise ProviderError(f"{model}: the stream broke: {type(error).__name__}") from error
        yield chunk


def _cut(stream: Stream[ChatCompletionChunk]) -> None:
    """End the stream from the checkpoints' thread: shut the socket down (which wakes a
    read blocked on it; closing alone may not), then close the response."""
    network_stream = stream.response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    stream.close()
