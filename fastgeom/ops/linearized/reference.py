"""Torch reference (the spec) of the fused "stored activation derivative x (tangent + residual)" op.

In a network linearised at a point (``fastgeom.engine.linear_net``) every elementwise activation
becomes a multiplication by its stored derivative d = act'(pre-activation), and a residual block's
output act(h + skip) has tangent d * (t_h + t_skip). Reverse mode needs the transpose: the
cotangent c of that output gives the same cotangent d * c to both branches, and at a block input
the two branch cotangents are summed before the previous block's derivative multiplies them, which
is again d * (c_branch + c_skip). So one op serves both directions:

    dact_add(d, a, b)[p, ...] = d[...] * (a[p, ...] + b[p, ...])     (b optional)

where d (*S) is stored once per point batch and a, b (*P, *S) carry a leading batch of
tangents/cotangents (broadcast, never materialised).
"""

from __future__ import annotations

import torch


def check(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> None:
    """Shapes: a (*P, *d.shape), b None or a.shape; same dtype and device."""
    if a.dim() < d.dim() or tuple(a.shape[a.dim() - d.dim() :]) != tuple(d.shape):
        raise ValueError(f"dact_add: a {tuple(a.shape)} must end with the derivative's shape {tuple(d.shape)}")
    if b is not None and b.shape != a.shape:
        raise ValueError(f"dact_add: residual b {tuple(b.shape)} must have a's shape {tuple(a.shape)}")
    ts = [d, a] + ([b] if b is not None else [])
    if len({t.dtype for t in ts}) != 1 or len({t.device for t in ts}) != 1:
        raise TypeError(
            "dact_add: d, a (and b) must share dtype and device, got " + ", ".join(f"{t.dtype}@{t.device}" for t in ts)
        )


def dact_add(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """d * (a + b) with d broadcast over a's leading dims (see module docstring)."""
    check(d, a, b)
    return d * (a if b is None else a + b)
