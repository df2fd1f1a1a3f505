"""AI learning-plan regeneration for Flask: a blueprint, an RQ job and a worker."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    ApiError,
    ConfigurationError,
    GenerationError,
    ModelRefused,
    OutputTruncated,
    OutputValidationError,
    ProviderError,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ReportedUsage,
)
from .extension import PlanRegen
from .models import (
    FailureClass,
    GenerationAttempt,
    Module,
    Plan,
    Regeneration,
    Status,
    Task,
    metadata,
)
from .plans import create_plan
from .providers import BuiltinProvider, GenerationProvider, GenerationRequest, GenerationResult
from .recovery import RecoveringWorker
from .routes import regen_bp
from .state import RegenState, get_state
from .store import PlanStore, SQLAlchemyPlanStore
from .types import GeneratedModule, GeneratedTask, PlanInput

if TYPE_CHECKING:
    from .openai_provider import OpenAIProvider as OpenAIProvider

try:
    __version__ = version("flask-plan-regen")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """``OpenAIProvider`` is imported on first use: it needs the ``openai`` extra."""
    if name == "OpenAIProvider":
        try:
            from .openai_provider import OpenAIProvider
        except ImportError as error:
            raise ImportError(
                "flask_plan_regen.OpenAIProvider needs the openai package: "
                f"pip install 'flask-plan-regen[openai]' ({error})"
            ) from error
        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApiError",
    "BuiltinProvider",
    "ConfigurationError",
    "FailureClass",
    "GeneratedModule",
    "GeneratedTask",
    "GenerationAttempt",
    "GenerationError",
    "GenerationProvider",
    "GenerationRequest",
    "GenerationResult",
    "ModelRefused",
    "Module",
    "OutputTruncated",
    "OutputValidationError",
    "Plan",
    "PlanInput",
    "PlanRegen",
    "PlanStore",
    "ProviderError",
    "ProviderQuotaExhausted",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "RecoveringWorker",
    "RegenState",
    "Regeneration",
    "ReportedUsage",
    "SQLAlchemyPlanStore",
    "Status",
    "Task",
    "__version__",
    "create_plan",
    "get_state",
    "metadata",
    "regen_bp",
]
