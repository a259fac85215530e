"""QR-based log-determinant pieces: column-pivoted Householder QR and the float64 log-diagonal sum.

``qrcp`` and ``logdiag_sum`` dispatch to fastgeom._C (CPU: csrc/ops/, CUDA: csrc/cuda/) when it is
built and usable, else to the torch references in ``reference.py``.
"""
from __future__ import annotations

import torch

from ..._ext import ext, require
from . import reference


def _pick(backend: str, op: str, device: torch.device) -> str:
    if backend == "auto":
        if ext.has_op(op) and (device.type == "cpu" or (device.type == "cuda" and ext.with_cuda)):
            return "compiled"
        return "torch"
    if backend == "torch":
        return "torch"
    if backend in ("cpp", "cuda"):
        require(backend)
        return "compiled"
    raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'torch', 'cpp' or 'cuda'")


def qrcp(A: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Householder QR with column pivoting of A (B, m, n) in float64: (R (B, min(m,n), n), perm (B, n))."""
    if _pick(backend, "qrcp", A.device) == "compiled" and A.device.type == "cpu":
        return torch.ops.fastgeom.qrcp(A.to(torch.float64))
    return reference.qrcp(A)


def logdiag_sum(R: torch.Tensor, k: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """sum_{i < k[b]} log|R[b, i, i]| in float64, shape (B,)."""
    if _pick(backend, "logdiag_sum", R.device) == "compiled":
        return torch.ops.fastgeom.logdiag_sum(R, k.to(R.device))
    return reference.logdiag_sum(R, k)
