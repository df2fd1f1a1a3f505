"""A provider for any OpenAI-compatible chat completions API (OpenAI, OpenRouter,
Ollama, vLLM, ...), on the official ``openai`` SDK: ``pip install
'flask-plan-regen[openai]'`` and set ``PLAN_REGEN_PROVIDER =
"flask_plan_regen.openai_provider:OpenAIProvider"`` (docs/providers.md).

The SDK's own retries are off (``max_retries=0``): the job retries, with its
own backoff and attempt count. Errors keep provider internals (and never the
API key) out of what users see: they get the failure class's public message.
"""

from __future__ import annotations

from typing import Any

import openai
from flask import current_app

from .errors import ProviderError, ProviderRateLimited, ProviderTimeout
from .providers import GenerationRequest, GenerationResult


class OpenAIProvider:
    """Generates plans with a chat completion that is asked for a JSON object.

    Reads ``PLAN_REGEN_PROVIDER_BASE_URL``, ``_API_KEY`` (else the SDK's
    ``OPENAI_API_KEY``), ``_MODEL``, ``_TIER_MODELS`` and ``_TIMEOUT`` from
    the app's config at each call.
    """

    name = "openai"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        config = current_app.config
        model = config["PLAN_REGEN_PROVIDER_TIER_MODELS"].get(
            request.tier, config["PLAN_REGEN_PROVIDER_MODEL"]
        )
        system, user = request.prompt()
        try:
            # A client per call: nothing pooled crosses RQ's fork, and a config
            # change needs no restart. Its cost is nothing next to the model's.
            with openai.OpenAI(
                api_key=config["PLAN_REGEN_PROVIDER_API_KEY"],
                base_url=config["PLAN_REGEN_PROVIDER_BASE_URL"],
                timeout=float(config["PLAN_REGEN_PROVIDER_TIMEOUT"]),
                max_retries=0,
            ) as client:
                completion = client.chat.completions.create(
                    model=model,
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ],
                    response_format={"type": "json_object"},
                )
        except openai.APITimeoutError as error:
            raise ProviderTimeout(f"{model}: no answer within the timeout") from error
        except openai.RateLimitError as error:
            raise ProviderRateLimited(f"{model}: HTTP 429 {_request_id(error)}") from error
        except openai.APIStatusError as error:
            detail = f"{model}: HTTP {error.status_code} {_request_id(error)}"
            raise ProviderError(detail) from error
        except openai.OpenAIError as error:
            # Connection errors, a missing API key, unreadable answers: the
            # class name says enough, and the message could carry settings.
            raise ProviderError(f"{model}: {type(error).__name__}") from error
        choice = completion.choices[0] if completion.choices else None
        content = choice.message.content if choice else None
        if not content:
            raise ProviderError(f"{model}: empty answer")
        usage = completion.usage
        return GenerationResult(
            content=content,
            provider=self.name,
            model=completion.model or model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )


def _request_id(error: Any) -> str:
    request_id = getattr(error, "request_id", None)
    return f"(request {request_id})" if request_id else ""
