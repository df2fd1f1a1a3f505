"""The operator console: an opt-in blueprint of pages, JSON documents and actions.

Register :data:`regen_admin_bp` at a prefix of your choice and name who may use
it with ``@regen.operator_required`` (or ``PLAN_REGEN_OPERATOR_HANDLER``);
without one every URL of the console answers 403 (docs/operations.md).
"""

from .views import regen_admin_bp

__all__ = ["regen_admin_bp"]
