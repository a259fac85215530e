"""Jacobian engines: dense (torch.func, the reference) and streamed (chunked JVP/VJP, bounded memory)."""
from .dense import jacobian_dense
from .planner import Plan, is_oom, plan
from .streamed import jacobian_blocks

__all__ = ["jacobian_dense", "jacobian_blocks", "plan", "Plan", "is_oom"]
