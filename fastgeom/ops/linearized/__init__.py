"""Fused op of linearised networks: ``dact_add(d, a, b) = d * (a + b)`` (and its transpose).

Implementations: ``reference`` (torch, the spec), ``triton`` (CUDA, or CPU under TRITON_INTERPRET=1)
and the compiled ``torch.ops.fastgeom.dact_add`` (csrc/ops/linearized.cpp, csrc/cuda/linearized.cu).
``dact_add(..., backend="auto")`` picks compiled CUDA, then Triton (CUDA tensors), then torch.
"""
from __future__ import annotations

import torch

from ..._ext import backend_usable, ext, require
from . import reference

BACKENDS = ("auto", "torch", "triton", "cpp", "cuda")


def pick(backend: str, device: torch.device) -> str:
    """The implementation ``dact_add`` will run for ``backend`` on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        if device.type == "cuda":
            if ext.has_op("dact_add") and ext.with_cuda:
                return "cuda"
            if backend_usable("triton")[0]:
                return "triton"
        return "torch"
    if backend in ("cpp", "cuda"):
        require(backend)
        if not ext.has_op("dact_add"):
            raise RuntimeError("fastgeom._C was built without the dact_add op; rebuild the extension "
                               "(`FASTGEOM_BUILD_CUDA=0 python setup.py build_ext --inplace`)")
    if backend == "triton":
        require("triton")
    return backend


def dact_add(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """d * (a + b), d (*S) broadcast over a's leading dims; b optional (see reference.py)."""
    impl = pick(backend, a.device)
    if impl == "torch":
        return reference.dact_add(d, a, b)
    if impl == "triton":
        from . import triton as _tr
        return _tr.dact_add(d, a, b)
    reference.check(d, a, b)
    return torch.ops.fastgeom.dact_add(d, a, b)


def dact_add_t(d: torch.Tensor, c: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Transpose of dact_add w.r.t. (a, b): the cotangent d * c."""
    return dact_add(d, c, None, backend=backend)
