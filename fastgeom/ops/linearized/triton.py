"""Triton kernel for ``dact_add`` (see reference.py): one pass over a, b, d -> out, d read per tile.

Works on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference


@triton.jit
def _dact_add_kernel(d_ptr, a_ptr, b_ptr, out_ptr, total, N, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    if HAS_B:
        a += tl.load(b_ptr + offs, mask=mask, other=0.0)
    d = tl.load(d_ptr + offs % N, mask=mask, other=0.0)
    tl.store(out_ptr + offs, d * a, mask=mask)


def dact_add(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """Triton ``d * (a + b)``; inputs are made contiguous (non-contiguous views are copied first)."""
    reference.check(d, a, b)
    d_, a_ = d.contiguous(), a.contiguous()
    b_ = b.contiguous() if b is not None else a_
    out = torch.empty_like(a_)
    total, N = a_.numel(), d_.numel()
    if total == 0:
        return out
    grid = (triton.cdiv(total, block),)
    _dact_add_kernel[grid](d_, a_, b_, out, total, max(N, 1), HAS_B=b is not None, BLOCK=block)
    return out
