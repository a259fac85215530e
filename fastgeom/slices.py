"""Slices through input space (MATH.md 7.3, 8.1-8.3): grids, interpolation paths, planes, entropy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SQRT3 = math.sqrt(3.0)


def grid_2d(lo: float = -1.5, hi: float = 1.5, n: int = 40, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(points (n*n, 2), axis (n,)): Cartesian grid with x1 the slow index (MATH.md 7.3)."""
    ax = torch.linspace(lo, hi, n, dtype=dtype)
    return torch.cartesian_prod(ax, ax), ax


def path(x0: torch.Tensor, x1: torch.Tensor, n: int = 64, include_end: bool = False) -> torch.Tensor:
    """x(t) = (1-t) x0 + t x1 at t_k = k/n, k = 0..n-1 (x1 excluded, as in the paper), or
    t = linspace(0, 1, n) with ``include_end``. Returns (n, *x0.shape)."""
    if x0.shape != x1.shape:
        raise ValueError(f"path endpoints differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    t = torch.linspace(0, 1, n, dtype=x0.dtype) if include_end else torch.arange(n, dtype=x0.dtype) / n
    t = t.reshape(n, *([1] * x0.dim()))
    return (1 - t) * x0[None] + t * x1[None]


def barycentric(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3) barycentric coordinates of plane coordinates (a, b) (MATH.md 8.2)."""
    l1 = 1 / 3 - a + b / SQRT3
    l2 = 1 / 3 + a + b / SQRT3
    l3 = 1 / 3 - 2 * b / SQRT3
    return torch.stack([l1, l2, l3], dim=-1)


ANCHORS_AB = ((-0.5, 0.5 / SQRT3), (0.5, 0.5 / SQRT3), (0.0, -1 / SQRT3))


@dataclass
class Plane:
    """Points of a plane through three anchors. ``points`` (P, *shape) are those kept by ``hull``;
    ``a``, ``b`` (P,) their plane coordinates; ``lam`` (P, 3) barycentric; ``inside`` (P,) in the
    convex hull; ``index`` (P,) flat index into the n x n grid (a slow); ``axis`` (n,) grid values."""

    points: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    lam: torch.Tensor
    inside: torch.Tensor
    index: torch.Tensor
    axis: torch.Tensor
    n: int


def plane(
    x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, n: int = 60, hull: str = "affine", extent: float = 1.0
) -> Plane:
    """x(a, b) = xbar + a (x2 - x1) + b u, u = (x1 + x2 - 2 x3)/sqrt(3), (a, b) on an n x n grid over
    [-extent, extent]^2 (MATH.md 8.2). ``hull="convex"`` keeps the points with all barycentric
    coordinates >= 0 (the ternary plot); ``"affine"`` keeps the whole patch."""
    if hull not in ("convex", "affine"):
        raise ValueError(f"hull must be 'convex' or 'affine', got {hull!r}")
    if not (x1.shape == x2.shape == x3.shape):
        raise ValueError(f"plane anchors differ in shape: {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(x3.shape)}")
    ax = torch.linspace(-extent, extent, n, dtype=x1.dtype)
    ab = torch.cartesian_prod(ax, ax)
    a, b = ab[:, 0], ab[:, 1]
    lam = barycentric(a, b)
    inside = (lam >= 0).all(dim=-1)
    index = torch.arange(n * n)
    if hull == "convex":
        a, b, lam, index = a[inside], b[inside], lam[inside], index[inside]
        inside = inside[inside]
    X = torch.stack([x1, x2, x3]).reshape(3, -1)
    pts = (lam.to(X.dtype) @ X).reshape(-1, *x1.shape)
    return Plane(points=pts, a=a, b=b, lam=lam, inside=inside, index=index, axis=ax, n=n)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_c p_c ln p_c / ln C in [0, 1] for logits (B, C) (MATH.md 8.3)."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])
