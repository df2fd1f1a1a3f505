"""A provider for any OpenAI-compatible chat completions API (OpenAI, OpenRouter,
Ollama, vLLM, ...), on the official ``openai`` SDK: ``pip install
'flask-plan-regen[openai]'`` and set ``PLAN_REGEN_PROVIDER =
"flask_plan_regen.openai_provider:OpenAIProvider"`` (docs/providers.md).

The SDK's own retries are off (``max_retries=0``): the job retries, with its
own backoff and attempt count, so every failure here says whether another
call could help (its failure class) and how long the server asked to wait
(``retry_after``). The server's own words go to the logs with the API key
masked; users see a fixed sentence, or the model's sanitised refusal.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections import ChainMap
from collections.abc import Mapping
from typing import Any

import openai
from flask import current_app
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import ResponseFormat
from openai.types.shared_params import ResponseFormatJSONObject, ResponseFormatJSONSchema

from .errors import (
    GenerationError,
    ModelRefused,
    OutputTruncated,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
)
from .output import plan_json_schema
from .providers import GenerationRequest, GenerationResult

logger = logging.getLogger("flask_plan_regen.openai_provider")

JSON_MODE: ResponseFormatJSONObject = {"type": "json_object"}
STRUCTURED_OUTPUT: ResponseFormatJSONSchema = {
    "type": "json_schema",
    "json_schema": {"name": "learning_plan", "strict": True, "schema": plan_json_schema()},
}
# (base URL, model) pairs whose server said it does not support json_schema: asked in
# JSON mode for the rest of this process's life.
_WITHOUT_JSON_SCHEMA: set[tuple[str, str]] = set()

# HTTP statuses worth another call (the SDK's own retry rule); any other 4xx is the
# request's or the settings' fault and would be refused again.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_REJECTED = {
    400: "The generation provider rejected the request as invalid (HTTP 400).",
    401: "The generation provider rejected the API key (HTTP 401).",
    403: "The generation provider denied access to the model (HTTP 403).",
    404: "The generation provider does not know the model or endpoint (HTTP 404).",
}
PUBLIC_TEXT_LIMIT = 300
LOGGED_TEXT_LIMIT = 1000


class OpenAIProvider:
    """Generates plans with one chat completion asked for the plan's JSON schema.

    Reads the ``PLAN_REGEN_PROVIDER_*`` keys (docs/configuration.md) from the
    app's config at each call; ``settings`` (a provider entry's) win over them.
    """

    name = "openai"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def generate(self, request: GenerationRequest) -> GenerationResult:
        config: Mapping[str, Any] = ChainMap(self.settings, current_app.config)
        model = config["PLAN_REGEN_PROVIDER_TIER_MODELS"].get(
            request.tier, config["PLAN_REGEN_PROVIDER_MODEL"]
        )
        system, user = request.prompt()
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        # A client per call: nothing pooled crosses RQ's fork, and a config change
        # needs no restart. Its cost is nothing next to the model's.
        try:
            client = openai.OpenAI(
                api_key=config["PLAN_REGEN_PROVIDER_API_KEY"],
                base_url=config["PLAN_REGEN_PROVIDER_BASE_URL"],
                timeout=float(config["PLAN_REGEN_PROVIDER_TIMEOUT"]),
                max_retries=0,
            )
        except openai.OpenAIError as error:  # no API key anywhere: another call would not help
            raise ProviderRejected(
                f"{model}: {type(error).__name__}: {error}",
                public_message="The generation provider is not configured (no API key).",
            ) from error
        with client:
            try:
                completion = _complete(client, config, model, messages)
            except openai.OpenAIError as error:
                raise _failure(error, model, client.api_key) from error
        return _result(completion, model, config, client.api_key)


def _complete(
    client: openai.OpenAI,
    config: Mapping[str, Any],
    model: str,
    messages: list[ChatCompletionMessageParam],
) -> Any:
    """One chat completion; in JSON mode again, once, if the server refuses json_schema."""
    server = (str(client.base_url), model)
    structured = (
        config["PLAN_REGEN_PROVIDER_RESPONSE_FORMAT"] == "json_schema"
        and server not in _WITHOUT_JSON_SCHEMA
    )
    try:
        return _create(
            client, config, model, messages, STRUCTURED_OUTPUT if structured else JSON_MODE
        )
    except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
        if not structured or not _refuses_json_schema(error):
            raise
        _WITHOUT_JSON_SCHEMA.add(server)
        logger.warning(
            "%s at %s does not take response_format json_schema (%s): asking in JSON mode "
            "from now on in this process; set PLAN_REGEN_PROVIDER_RESPONSE_FORMAT = "
            "'json_object' to skip the refused call",
            model,
            server[0],
            _server_message(error, client.api_key),
        )
    return _create(client, config, model, messages, JSON_MODE)


def _create(
    client: openai.OpenAI,
    config: Mapping[str, Any],
    model: str,
    messages: list[ChatCompletionMessageParam],
    response_format: ResponseFormat,
) -> Any:
    cap = int(config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"])
    cap_field = config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS_PARAM"]
    return client.chat.completions.create(
        model=model,
        messages=messages,
        response_format=response_format,
        max_completion_tokens=cap if cap_field == "max_completion_tokens" else openai.omit,
        max_tokens=cap if cap_field == "max_tokens" else openai.omit,
    )


def _refuses_json_schema(error: openai.APIStatusError) -> bool:
    """Whether a 400/422 is about the response format (not the prompt, model or key)."""
    text = f"{error.param or ''} {_server_message(error, None)}".lower()
    return "json_schema" in text or "response_format" in text


def _result(
    completion: Any, model: str, config: Mapping[str, Any], api_key: str | None
) -> GenerationResult:
    """The completion's content, or the failure that explains why there is none to use."""
    if not isinstance(completion, ChatCompletion):
        # The SDK hands back the body as text when it is not JSON: typically a server
        # that streams (server-sent events) although no stream was asked for.
        text = str(completion).lstrip()
        kind = "a server-sent event stream" if text.startswith(("data:", "event:")) else "not JSON"
        raise ProviderError(
            f"{model}: the answer is {kind}, not a chat completion "
            f"(it starts {_masked(text, api_key)[:80]!r})"
        )
    choice = completion.choices[0] if completion.choices else None
    if choice is None:
        raise ProviderError(f"{model}: the answer has no choices")
    refusal = getattr(choice.message, "refusal", None)
    if refusal:
        reason = _sanitised(refusal, api_key, PUBLIC_TEXT_LIMIT)
        raise ModelRefused(
            f"{model}: refused: {_sanitised(refusal, api_key, LOGGED_TEXT_LIMIT)}",
            public_message=f"The model declined to generate this plan: {reason}",
        )
    if choice.finish_reason == "length":
        cap = config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"]
        used = completion.usage.completion_tokens if completion.usage else "?"
        raise OutputTruncated(
            f"{model}: answer cut off at the output cap ({used} of {cap} tokens)",
            public_message=f"The model's answer was cut off at the output limit ({cap} tokens).",
        )
    if choice.finish_reason == "content_filter":
        raise ModelRefused(
            f"{model}: answer stopped by the provider's content filter",
            public_message="The provider's content filter stopped the model's answer.",
        )
    content = choice.message.content
    if not content:
        raise ProviderError(f"{model}: empty answer (finish_reason {choice.finish_reason!r})")
    usage = completion.usage
    return GenerationResult(
        content=content,
        provider=OpenAIProvider.name,
        model=completion.model or model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


def _failure(error: openai.OpenAIError, model: str, api_key: str | None) -> GenerationError:
    """The failure an SDK error means: its class decides retrying, its text goes to the log."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderTimeout(f"{model}: no answer within the timeout")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        request_id = f" (request {error.request_id})" if error.request_id else ""
        detail = f"{model}: HTTP {status}{request_id}: {_server_message(error, api_key)}"
        retry_after = retry_after_seconds(error.response.headers)
        if status == 429:
            return ProviderRateLimited(detail, retry_after=retry_after)
        if status >= 500 or status in _RETRYABLE_STATUSES:
            return ProviderError(detail, retry_after=retry_after)
        return ProviderRejected(
            detail,
            public_message=_REJECTED.get(
                status, f"The generation provider rejected the request (HTTP {status})."
            ),
        )
    # Connection errors, unreadable answers: the class name says enough, and the
    # message could carry settings.
    return ProviderError(f"{model}: {type(error).__name__}")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The delay a server asked for: ``retry-after-ms``, else ``Retry-After`` (seconds or
    an HTTP date); ``None`` when it said nothing readable."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def _server_message(error: openai.APIStatusError, api_key: str | None) -> str:
    """What the server said about the error, for the log (the API key masked)."""
    body = error.body
    message = body.get("message") if isinstance(body, Mapping) else body
    return _sanitised(str(message or error.message), api_key, LOGGED_TEXT_LIMIT)


def _sanitised(text: str, api_key: str | None, limit: int) -> str:
    """``text`` on one line, without control characters or the API key, at most ``limit``."""
    text = " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())
    text = _masked(text, api_key)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _masked(text: str, api_key: str | None) -> str:
    """``text`` with the key hidden, also where a server echoed it cut short or recased.

    Any run of characters starting with the key's first 8 (in any case) is
    replaced, up to the next space or quote.
    """
    if not api_key:
        return text
    text = text.replace(api_key, "***")
    head = re.escape(api_key[:8])
    return (
        re.sub(rf"{head}[^\s'\"]*", "***", text, flags=re.IGNORECASE) if len(api_key) >= 8 else text
    )
