"""Independent float64 brute-force oracles for the foundation tests (torch.func.jacrev + svdvals, mpmath).

Nothing here calls fastgeom: these are the references fastgeom is checked against.
"""

from __future__ import annotations

import mpmath
import torch
from torch.func import jacrev


def brute_jacobian(f, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """J (B, d_out, d_in) of the per-point flattened f at each point of x (B, *in), one jacrev per point
    (``chunk_size``: VJPs per vmapped pass, to bound memory for big models)."""
    rows = []
    for i in range(x.shape[0]):
        xi = x[i].detach()
        Ji = jacrev(lambda z: f(z[None]).reshape(-1), chunk_size=chunk_size)(xi)
        rows.append(Ji.reshape(-1, xi.numel()).detach())
    return torch.stack(rows)


def brute_logvol(J: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """sum of log of the `rank` largest singular values (default min(d_out, d_in)) per point, float64."""
    s = torch.linalg.svdvals(J.to(torch.float64))
    r = s.shape[-1] if rank is None else rank
    return torch.log(s[..., :r]).sum(-1)


def mp_logvol(J: torch.Tensor, dps: int = 300) -> float:
    """log pseudo-volume of one float64 matrix J (m, n), exactly as stored, in `dps` digits: 0.5 log det(A^T A)
    with A the tall one of J, J^T. Float64 entries convert exactly, so this isolates the linear algebra."""
    with mpmath.workdps(dps):
        A = mpmath.matrix(J.to(torch.float64).tolist())
        if A.rows < A.cols:
            A = A.T
        return float(mpmath.log(mpmath.det(A.T * A)) / 2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|, 1) elementwise (relative for large values, absolute near 0)."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return float(((a - b).abs() / b.abs().clamp_min(1.0)).max()) if a.numel() else 0.0
