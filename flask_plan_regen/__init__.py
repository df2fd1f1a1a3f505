"""AI learning-plan regeneration for Flask: a blueprint, an RQ job and a worker."""

from .errors import (
    ApiError,
    ConfigurationError,
    GenerationError,
    ModelRefused,
    OutputTruncated,
    OutputValidationError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
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
from .providers import BuiltinProvider, GenerationProvider, GenerationRequest, GenerationResult
from .recovery import RecoveringWorker
from .routes import regen_bp
from .state import RegenState, get_state
from .store import PlanStore, SQLAlchemyPlanStore
from .types import GeneratedModule, GeneratedTask, PlanInput

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
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "RecoveringWorker",
    "RegenState",
    "Regeneration",
    "SQLAlchemyPlanStore",
    "Status",
    "Task",
    "get_state",
    "metadata",
    "regen_bp",
]
