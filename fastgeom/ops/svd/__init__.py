"""One-sided Jacobi SVD (singular values of column-graded matrices to relative accuracy).

Candidates, in ``auto`` order (``fastgeom.ops.dispatch``): ``cuda`` (csrc/cuda/jacobi.cu), ``cpp``
(csrc/ops/jacobi.cpp), ``torch`` (``reference.jacobi_svdvals``, the spec). The compiled kernels use
the reference's rotations and convergence test; the CPU one orders the pairs cyclically with de Rijk
pivoting, the CUDA one round-robin (as the reference).
"""

from __future__ import annotations

import torch

from .. import dispatch as _d
from . import reference

OP = "jacobi_svdvals"


def _compiled(X: torch.Tensor, max_sweeps: int) -> torch.Tensor:
    return torch.ops.fastgeom.jacobi_svdvals(X, int(max_sweeps))


JACOBI_SVDVALS = _d.Op(
    OP,
    [
        _d.Impl("cuda", _compiled, _d.compiled_cuda(OP)),
        _d.Impl("cpp", _compiled, _d.compiled_cpu(OP)),
        _d.Impl("torch", reference.jacobi_svdvals, _d.always),
    ],
)

OPS = (JACOBI_SVDVALS,)


def pick(backend: str, device: torch.device) -> str:
    """The implementation ``jacobi_svdvals`` runs for ``backend`` on ``device``: 'cuda', 'cpp' or 'torch'."""
    return JACOBI_SVDVALS.pick(backend, device, torch.float64)


def jacobi_svdvals(X: torch.Tensor, max_sweeps: int = 60, backend: str = "auto") -> torch.Tensor:
    """(B, q) float64 singular values, descending, of X (B, p, q) by one-sided Jacobi on its columns."""
    if X.dim() != 3:
        raise ValueError(f"X must be (B, p, q), got shape {tuple(X.shape)}")
    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"max_sweeps must be a positive int, got {max_sweeps!r}")
    return JACOBI_SVDVALS(X, max_sweeps, backend=backend, device=X.device, dtype=X.dtype)
