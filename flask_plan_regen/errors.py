"""Exceptions: API errors answered as JSON, configuration and generation failures."""

from __future__ import annotations

import dataclasses
from typing import Any

from .models import RETRYABLE_FAILURES, FailureClass


class ConfigurationError(RuntimeError):
    """A ``PLAN_REGEN_*`` setting or a hook is wrong; raised at ``init_app`` or first use."""


class ApiError(Exception):
    """An error answered as ``{"error", "code", "details"?}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def queue_unavailable() -> ApiError:
    """The answer of a request that needed Redis and could not reach it."""
    return ApiError(
        503,
        "QUEUE_UNAVAILABLE",
        "The regeneration queue is unavailable; nothing was queued. Try again shortly.",
        headers={"Retry-After": "5"},
    )


@dataclasses.dataclass(frozen=True)
class ReportedUsage:
    """What a server reported about a call it answered: tokens, its own cost, the model.

    ``answered`` says the server produced a completion (HTTP 200 with a choice);
    ``cost`` is the server's own figure (OpenRouter's ``usage.cost``) as it sent it.
    """

    model: str | None = None
    prompt_tokens: Any = None
    completion_tokens: Any = None
    cached_tokens: Any = None
    cost: Any = None
    answered: bool = False


class GenerationError(Exception):
    """A provider call or its output failed; ``failure_class`` decides retrying.

    ``public_message`` is what users and the API see; ``str(error)`` may carry
    provider internals and only goes to the logs. ``retry_after`` is the delay
    (seconds) the provider asked for before the next call, if it said one.
    ``usage`` is what the server reported when it answered before failing (a
    truncated or refused answer still costs tokens), so the attempt records it.
    """

    failure_class: FailureClass = FailureClass.PROVIDER_ERROR
    public_message = "The generation provider failed."

    def __init__(
        self,
        detail: str = "",
        *,
        public_message: str | None = None,
        retry_after: float | None = None,
        usage: ReportedUsage | None = None,
    ) -> None:
        super().__init__(detail or self.public_message)
        if public_message is not None:
            self.public_message = public_message
        self.retry_after = retry_after
        self.usage = usage

    @property
    def retryable(self) -> bool:
        return self.failure_class in RETRYABLE_FAILURES


class ProviderError(GenerationError):
    failure_class = FailureClass.PROVIDER_ERROR
    public_message = "The generation provider returned an error or unreadable output."


class ProviderRateLimited(GenerationError):
    failure_class = FailureClass.RATE_LIMIT
    public_message = "The generation provider is rate limiting requests."


class ProviderRejected(GenerationError):
    """The provider refused the request itself (HTTP 400, 401, 403, 404...): not retried."""

    failure_class = FailureClass.PROVIDER_REJECTED
    public_message = "The generation provider rejected the request."


class ProviderQuotaExhausted(GenerationError):
    """The provider account is out of credit (OpenAI's ``insufficient_quota``): permanent
    until an operator pays, so never retried, and refunded."""

    failure_class = FailureClass.PROVIDER_QUOTA
    public_message = "Generation is unavailable right now."


class ModelRefused(GenerationError):
    """The model declined to answer; ``public_message`` carries its (sanitised) reason."""

    failure_class = FailureClass.REFUSED
    public_message = "The model declined to generate this plan."


class OutputTruncated(GenerationError):
    """The answer was cut off at the output token cap: the same request would be cut again."""

    failure_class = FailureClass.TRUNCATED
    public_message = "The model's answer was cut off at the output limit."


class ProviderTimeout(GenerationError):
    failure_class = FailureClass.TIMEOUT
    public_message = "The generation provider did not answer in time."


class OutputValidationError(GenerationError):
    failure_class = FailureClass.VALIDATION
    public_message = "The generated plan did not meet the output rules."


class InternalFailure(GenerationError):
    """Our own code raised after the provider answered (output rules, pacing, saving).

    A bug, not the provider's fault nor the user's: retrying would pay for more
    provider calls that end the same way, so it fails at once, quota given back.
    """

    failure_class = FailureClass.INTERNAL
    public_message = "An internal error stopped this regeneration; it has been logged."


class ProviderUnavailable(GenerationError):
    """Every provider entry stayed down (open breaker) for ``PLAN_REGEN_PROVIDER_OUTAGE_WAIT``."""

    failure_class = FailureClass.PROVIDER_UNAVAILABLE
    public_message = "The generation provider is unavailable right now; try again later."
