"""One-sided Jacobi SVD (singular values of column-graded matrices to relative accuracy).

Implementations: ``reference.jacobi_svdvals`` (torch, the spec) and the compiled
``torch.ops.fastgeom.jacobi_svdvals`` (CPU: csrc/ops/jacobi.cpp, CUDA: csrc/cuda/jacobi.cu).
``backend="auto"`` picks the compiled op for the tensor's device when fastgeom._C has it, else torch;
an explicit "cpp" / "cuda" that cannot run here raises, naming why.
"""
from __future__ import annotations

import torch

from ..._ext import ext, require
from . import reference

BACKENDS = ("auto", "torch", "cpp", "cuda")
OP = "jacobi_svdvals"


def pick(backend: str, device: torch.device) -> str:
    """The implementation ``jacobi_svdvals`` runs for ``backend`` on ``device``: 'torch', 'cpp' or 'cuda'."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        if ext.has_op(OP):
            if device.type == "cpu":
                return "cpp"
            if device.type == "cuda" and ext.with_cuda:
                return "cuda"
        return "torch"
    if backend == "torch":
        return "torch"
    require(backend, device)
    if not ext.has_op(OP):
        raise RuntimeError(f"backend {backend!r}: fastgeom._C was built without the {OP} op; rebuild the "
                           "extension (`FASTGEOM_BUILD_CUDA=0 python setup.py build_ext --inplace`)")
    want = "cpu" if backend == "cpp" else "cuda"
    if device.type != want:
        raise RuntimeError(f"backend {backend!r} runs on {want} tensors, got a tensor on {device}")
    return backend


def jacobi_svdvals(X: torch.Tensor, max_sweeps: int = 60, backend: str = "auto") -> torch.Tensor:
    """(B, q) float64 singular values, descending, of X (B, p, q) by one-sided Jacobi on its columns."""
    if X.dim() != 3:
        raise ValueError(f"X must be (B, p, q), got shape {tuple(X.shape)}")
    if pick(backend, X.device) == "torch":
        return reference.jacobi_svdvals(X, max_sweeps)
    return torch.ops.fastgeom.jacobi_svdvals(X, int(max_sweeps))
