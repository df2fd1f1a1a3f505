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
from redis.exceptions import RedisError

from .errors import (
    GenerationError,
    ModelRefused,
    OutputTruncated,
    ProviderError,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ReportedUsage,
)
from .metrics import count_provider_quota
from .output import plan_json_schema
from .providers import GenerationRequest, GenerationResult
from .state import get_state
from .streaming_call import Connections, create

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
    interruptible = True
    """Streamed calls stop at ``request.checkpoints`` (streaming_call.py)."""

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
        connections = Connections()
        try:
            client = openai.OpenAI(
                api_key=config["PLAN_REGEN_PROVIDER_API_KEY"],
                base_url=config["PLAN_REGEN_PROVIDER_BASE_URL"],
                timeout=float(config["PLAN_REGEN_PROVIDER_TIMEOUT"]),
                max_retries=0,
                http_client=openai.DefaultHttpxClient(event_hooks=connections.event_hooks()),
            )
        except openai.OpenAIError as error:  # no API key anywhere: another call would not help
            raise ProviderRejected(
                f"{model}: {type(error).__name__}: {error}",
                public_message="The generation provider is not configured (no API key).",
            ) from error
        with client:
            try:
                completion = _complete(client, connections, config, model, messages, request)
            except openai.OpenAIError as error:
                raise _failure(error, model, client.api_key) from error
        return _result(completion, model, config, client.api_key)


def _complete(
    client: openai.OpenAI,
    connections: Connections,
    config: Mapping[str, Any],
    model: str,
    messages: list[ChatCompletionMessageParam],
    request: GenerationRequest,
) -> Any:
    """One chat completion; in JSON mode again, once, if the server refuses json_schema."""
    server = (str(client.base_url), model)
    structured = (
        config["PLAN_REGEN_PROVIDER_RESPONSE_FORMAT"] == "json_schema"
        and server not in _WITHOUT_JSON_SCHEMA
    )
    try:
        return _create(
            client,
            connections,
            config,
            model,
            messages,
            STRUCTURED_OUTPUT if structured else JSON_MODE,
            request,
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
    return _create(client, connections, config, model, messages, JSON_MODE, request)


def _create(
    client: openai.OpenAI,
    connections: Connections,
    config: Mapping[str, Any],
    model: str,
    messages: list[ChatCompletionMessageParam],
    response_format: ResponseFormat,
    request: GenerationRequest,
) -> Any:
    cap = int(config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"])
    cap_field = config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS_PARAM"]
    return create(
        client,
        connections,
        request,
        stream=bool(config["PLAN_REGEN_PROVIDER_STREAM"]),
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
    """The completion's content, or the failure that explains why there is none to use.

    Every failure raised after the server answered carries the usage it reported.
    """
    if not isinstance(completion, ChatCompletion):
        # The SDK hands back the body as text when it is not JSON: typically a server
        # that streams (server-sent events) although no stream was asked for.
        text = str(completion).lstrip()
        kind = "a server-sent event stream" if text.startswith(("data:", "event:")) else "not JSON"
        raise ProviderError(
            f"{model}: the answer is {kind}, not a chat completion "
            f"(it starts {_masked(text, api_key)[:80]!r})"
        )
    usage = _reported_usage(completion, model)
    body_error = (completion.model_extra or {}).get("error")
    choices = getattr(completion, "choices", None)
    if body_error is not None and not choices:
        # OpenRouter: HTTP 200 with {"error": {"code": 429|502|..., "message": ...}}.
        raise _body_failure(body_error, model, api_key, usage)
    choice = choices[0] if choices else None
    if choice is None:
        raise ProviderError(f"{model}: the answer has no choices", usage=usage)
    refusal = getattr(choice.message, "refusal", None)
    if refusal:
        reason = _sanitised(refusal, api_key, PUBLIC_TEXT_LIMIT)
        raise ModelRefused(
            f"{model}: refused: {_sanitised(refusal, api_key, LOGGED_TEXT_LIMIT)}",
            public_message=f"The model declined to generate this plan: {reason}",
            usage=usage,
        )
    if choice.finish_reason == "length":
        cap = config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"]
        used = completion.usage.completion_tokens if completion.usage else "?"
        raise OutputTruncated(
            f"{model}: answer cut off at the output cap ({used} of {cap} tokens)",
            public_message=f"The model's answer was cut off at the output limit ({cap} tokens).",
            usage=usage,
        )
    if choice.finish_reason == "content_filter":
        raise ModelRefused(
            f"{model}: answer stopped by the provider's content filter",
            public_message="The provider's content filter stopped the model's answer.",
            usage=usage,
        )
    if choice.finish_reason == "error":
        # OpenRouter: the upstream failed mid-answer; its words are in the choice's error.
        upstream = (choice.model_extra or {}).get("error")
        raise ProviderError(
            f"{model}: the answer ended with an upstream error: "
            f"{_body_message(upstream, api_key) or 'no message'}",
            usage=usage,
        )
    content = choice.message.content
    if not content:
        raise ProviderError(
            f"{model}: empty answer (finish_reason {choice.finish_reason!r})", usage=usage
        )
    return GenerationResult(
        content=content,
        provider=OpenAIProvider.name,
        model=usage.model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reported_cost=usage.cost,
    )


def _reported_usage(completion: ChatCompletion, model: str) -> ReportedUsage:
    """The usage a completion reports: tokens (cached ones from ``prompt_tokens_details``),
    the server's own ``usage.cost`` (OpenRouter) and the model that answered."""
    usage = getattr(completion, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    return ReportedUsage(
        model=getattr(completion, "model", None) or model,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        cached_tokens=getattr(details, "cached_tokens", None),
        cost=(usage.model_extra or {}).get("cost") if usage is not None else None,
        answered=bool(getattr(completion, "choices", None)),
    )


def _body_failure(
    body_error: Any, model: str, api_key: str | None, usage: ReportedUsage
) -> GenerationError:
    """The failure an ``error`` object in a 200 body means, classed by its ``code``: 429 a
    rate limit (backed off), 402 or ``insufficient_quota`` out of credit, else the
    provider's error (retried)."""
    code = body_error.get("code") if isinstance(body_error, Mapping) else None
    # The server's message goes to the log with the failure (lifecycle.fail logs it).
    detail = f"{model}: error in a 200 answer (code {code!r}): {_body_message(body_error, api_key)}"
    if code == "insufficient_quota" or code == 402:
        return _out_of_credit(detail, usage)
    if code == 429 or code == "rate_limit_exceeded":
        return ProviderRateLimited(detail, usage=usage)
    return ProviderError(detail, usage=usage)


def _body_message(body_error: Any, api_key: str | None) -> str:
    message = body_error.get("message") if isinstance(body_error, Mapping) else body_error
    return _sanitised(str(message or ""), api_key, LOGGED_TEXT_LIMIT)


# How long one "out of credit" warning stands for all the app's workers.
OUT_OF_CREDIT_WARNING_TTL = 3600
_warned_out_of_credit = False  # when Redis cannot say


def _out_of_credit(detail: str, usage: ReportedUsage | None = None) -> ProviderQuotaExhausted:
    """``provider_quota``: a metric per call and one warning (an operator must add credit),
    once an hour for the whole app: forked work horses share no memory, so a key in Redis
    says whether it was given."""
    count_provider_quota()
    if _first_to_warn():
        logger.warning(
            "the provider account is out of credit (%s): every generation fails as "
            "provider_quota until an operator adds credit; this is logged once an hour",
            detail,
        )
    return ProviderQuotaExhausted(detail, usage=usage)


def _first_to_warn() -> bool:
    global _warned_out_of_credit
    state = get_state()
    try:
        return bool(
            state.redis.set(
                state.key("provider-out-of-credit"), 1, nx=True, ex=OUT_OF_CREDIT_WARNING_TTL
            )
        )
    except RedisError:
        first, _warned_out_of_credit = not _warned_out_of_credit, True
        return first


def _failure(error: openai.OpenAIError, model: str, api_key: str | None) -> GenerationError:
    """The failure an SDK error means: its class decides retrying, its text goes to the log."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderTimeout(f"{model}: no answer within the timeout")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        request_id = f" (request {error.request_id})" if error.request_id else ""
        detail = f"{model}: HTTP {status}{request_id}: {_server_message(error, api_key)}"
        retry_after = retry_after_seconds(error.response.headers)
        code = _error_code(error)
        if code == "insufficient_quota":
            return _out_of_credit(detail)
        if code == "content_filter":
            # Azure's filter stopped the prompt: what was asked, like a filtered answer.
            return ModelRefused(
                detail,
                public_message="The provider's content filter refused this plan's request.",
            )
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


def _error_code(error: openai.APIStatusError) -> str | None:
    """The ``error.code`` of an error body (``insufficient_quota``, ``content_filter``...)."""
    code = getattr(error, "code", None)
    if code is None and isinstance(error.body, Mapping):
        code = error.body.get("code")
    return str(code) if code is not None else None


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
