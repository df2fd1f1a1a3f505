"""AI learning-plan regeneration for Flask: a blueprint, an RQ job and a worker."""

from .errors import (
    ApiError,
    ConfigurationError,
    GenerationError,
    OutputValidationError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)
from .extension import PlanRegen, RegenState, get_state
from .models import GenerationAttempt, Module, Plan, Regeneration, Task, metadata
from .providers import BuiltinProvider, GenerationProvider, GenerationRequest, GenerationResult
from .routes import regen_bp
from .store import PlanStore, SQLAlchemyPlanStore
from .types import GeneratedModule, GeneratedTask, PlanInput

__all__ = [
    "ApiError",
    "BuiltinProvider",
    "ConfigurationError",
    "GeneratedModule",
    "GeneratedTask",
    "GenerationAttempt",
    "GenerationError",
    "GenerationProvider",
    "GenerationRequest",
    "GenerationResult",
    "Module",
    "OutputValidationError",
    "Plan",
    "PlanInput",
    "PlanRegen",
    "PlanStore",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "RegenState",
    "Regeneration",
    "SQLAlchemyPlanStore",
    "Task",
    "get_state",
    "metadata",
    "regen_bp",
]
