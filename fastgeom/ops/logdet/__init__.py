"""QR-based log-determinant pieces: column-pivoted Householder QR and the float64 log-diagonal sum.

Candidates, in ``auto`` order (``fastgeom.ops.dispatch``):

- ``qrcp``: ``cpp`` (csrc/ops/qrcp.cpp, CPU), ``triton`` (``triton.py``, one program per matrix on the
  GPU; it also serves ``backend="cuda"``, there being no compiled CUDA twin), ``torch`` (``reference.py``).
- ``logdiag_sum``: ``cuda`` (csrc/cuda/logdiag.cu), ``cpp`` (csrc/ops/logdiag.cpp), ``torch``.
"""

from __future__ import annotations

import torch

from .. import dispatch as _d
from . import reference


def _qrcp_cpp(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.fastgeom.qrcp(A.to(torch.float64))


def _qrcp_triton(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton as _tr

    return _tr.qrcp(A)


def _logdiag_compiled(R: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.ops.fastgeom.logdiag_sum(R, k.to(R.device))


QRCP = _d.Op(
    "qrcp",
    [
        _d.Impl("cpp", _qrcp_cpp, _d.compiled_cpu("qrcp")),
        _d.Impl("triton", _qrcp_triton, _d.triton_on_device(), serves=("triton", "cuda"), auto_devices=("cuda",)),
        _d.Impl("torch", reference.qrcp, _d.always),
    ],
)

LOGDIAG_SUM = _d.Op(
    "logdiag_sum",
    [
        _d.Impl("cuda", _logdiag_compiled, _d.compiled_cuda("logdiag_sum")),
        _d.Impl("cpp", _logdiag_compiled, _d.compiled_cpu("logdiag_sum")),
        _d.Impl("torch", reference.logdiag_sum, _d.always),
    ],
)

OPS = (QRCP, LOGDIAG_SUM)


def _check_3d(name: str, X: torch.Tensor) -> None:
    if X.dim() != 3:
        raise ValueError(f"{name} must be (B, m, n), got shape {tuple(X.shape)}")


def qrcp(A: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Householder QR with column pivoting of A (B, m, n) in float64: (R (B, min(m,n), n), perm (B, n))."""
    _check_3d("qrcp: A", A)
    return QRCP(A, backend=backend, device=A.device, dtype=A.dtype)


def logdiag_sum(R: torch.Tensor, k: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """sum_{i < k[b]} log|R[b, i, i]| in float64, shape (B,)."""
    _check_3d("logdiag_sum: R", R)
    return LOGDIAG_SUM(R, k, backend=backend, device=R.device, dtype=R.dtype)
