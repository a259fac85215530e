"""Fused op of linearised networks: ``dact_add(d, a, b) = d * (a + b)`` (its own transpose; see reference.py).

Candidates, in ``auto`` order (``fastgeom.ops.dispatch``): ``cuda`` (csrc/cuda/linearized.cu),
``triton`` (``triton.py``; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 when asked for by
name), ``torch`` (``reference.py``). There is no compiled CPU kernel: one measured 1.56x slower than
torch's ``d * (a + b)`` (median over the linearised ResNet-18 shapes, 1 thread), so it was removed.
"""

from __future__ import annotations

import torch

from .. import dispatch as _d
from . import reference


def _triton(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    from . import triton as _tr

    return _tr.dact_add(d, a, b)


def _cuda(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.fastgeom.dact_add(d, a, b)


DACT_ADD = _d.Op(
    "dact_add",
    [
        _d.Impl("cuda", _cuda, _d.compiled_cuda("dact_add")),
        _d.Impl("triton", _triton, _d.triton_on_device(), auto_devices=("cuda",)),
        _d.Impl("torch", reference.dact_add, _d.always),
    ],
)

OPS = (DACT_ADD,)


def dact_add(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """d * (a + b), d (*S) broadcast over a's leading dims; b optional (see reference.py)."""
    reference.check(d, a, b)
    return DACT_ADD(d, a, b, backend=backend, device=a.device, dtype=a.dtype)
