"""The sinusoid task (MATH.md 7.2), one home for the demo, the experiments and the tests.

Research utility, not API: x ~ U([-1, 1]^2) labelled by y = 1[x2 > 0.6 sin(7 x1 - 1)];
``boundary_ratio`` measures how much a volume element concentrates near that true boundary.
"""

from __future__ import annotations

import torch

BAND = 0.15  # half-width of the band around the true boundary that boundary_ratio calls "near"


def sinusoid_boundary(x1: torch.Tensor) -> torch.Tensor:
    """x2 on the sinusoid task's true boundary, 0.6 sin(7 x1 - 1) (MATH.md 7.2)."""
    return 0.6 * torch.sin(7 * x1 - 1)


def sinusoid_data(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 2) float64 ~ U([-1, 1]^2) and labels y (n,) int64 = 1[x2 > sinusoid_boundary(x1)]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = (x[:, 1] > sinusoid_boundary(x[:, 0])).long()
    return x, y


def boundary_ratio(grid: torch.Tensor, vol: torch.Tensor, width: float = BAND) -> float:
    """Mean of ``vol`` (N,) over the points of ``grid`` (N, 2) within ``width`` of the true boundary
    (vertical distance), over its mean elsewhere; about 1 when the volume ignores the boundary."""
    near = (grid[:, 1] - sinusoid_boundary(grid[:, 0])).abs() < width
    if not near.any() or near.all():
        raise ValueError(
            f"boundary_ratio: no grid points {'near' if not near.any() else 'away from'} the boundary (width {width})"
        )
    return float(vol[near].mean() / vol[~near].mean())
