"""Jacobian engines: ``select(method, ...)`` returns one (dense, streamed, linearized or auto) whose
``run(x)`` yields float64 J blocks of point batches with a ``Record`` of what ran."""

from .choice import EXACT_METHODS, AutoEngine, DenseEngine, EngineWarning, select
from .dense import jacobian_dense
from .planner import Plan, is_oom, plan
from .streamed import AutogradPass, Record, StreamedEngine

__all__ = [
    "select",
    "EXACT_METHODS",
    "AutoEngine",
    "DenseEngine",
    "StreamedEngine",
    "AutogradPass",
    "Record",
    "EngineWarning",
    "jacobian_dense",
    "plan",
    "Plan",
    "is_oom",
]
