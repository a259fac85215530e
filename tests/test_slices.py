"""fastgeom.slices against MATH.md 7.3 and 8.1-8.3."""

import math

import pytest
import torch

from fastgeom import slices

SQ3 = math.sqrt(3)


def _anchors(d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3)]


def test_grid_is_40x40_with_x1_slow():
    pts, ax = slices.grid_2d()
    assert pts.shape == (1600, 2) and ax.shape == (40,)
    assert ax[0] == -1.5 and ax[-1] == 1.5
    assert torch.allclose(ax[1] - ax[0], torch.tensor(3 / 39, dtype=torch.float64))
    k = 123
    assert torch.equal(pts[k], torch.stack([ax[k // 40], ax[k % 40]]))


def test_path_endpoints_and_linearity():
    x0, x1, _ = _anchors()
    p = slices.path(x0, x1, 64)
    assert p.shape == (64, 7)
    assert torch.equal(p[0], x0)
    assert torch.allclose(p[32], 0.5 * (x0 + x1))  # t = 32/64
    assert not torch.allclose(p[-1], x1)  # x1 excluded (t_k = k/N)
    q = slices.path(x0, x1, 5, include_end=True)
    assert torch.allclose(q[-1], x1)
    # equal steps
    steps = p[1:] - p[:-1]
    assert torch.allclose(steps, steps[:1].expand_as(steps))
    with pytest.raises(ValueError, match="shape"):
        slices.path(x0, x1[:3])


@pytest.mark.parametrize("n", [9, 31])
def test_plane_barycentric_and_anchors(n):
    x1, x2, x3 = _anchors()
    pl = slices.plane(x1, x2, x3, n=n, hull="affine")
    assert pl.points.shape == (n * n, 7)
    assert torch.allclose(pl.lam.sum(-1), torch.ones(n * n, dtype=pl.lam.dtype))
    xbar = (x1 + x2 + x3) / 3
    u = (x1 + x2 - 2 * x3) / SQ3
    direct = xbar + pl.a[:, None] * (x2 - x1) + pl.b[:, None] * u
    assert torch.allclose(pl.points, direct, atol=1e-12)
    # anchors sit at the stated (a, b): barycentric coordinates are the unit vectors
    for k, (a, b) in enumerate(slices.ANCHORS_AB):
        lam = slices.barycentric(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
        assert torch.allclose(lam, torch.eye(3, dtype=torch.float64)[k], atol=1e-12)
    # equilateral triangle of side 1
    A = torch.tensor(slices.ANCHORS_AB)
    for i in range(3):
        assert abs(float((A[i] - A[(i + 1) % 3]).norm()) - 1) < 1e-12


def test_convex_mask_is_all_lambda_nonnegative():
    x1, x2, x3 = _anchors()
    aff = slices.plane(x1, x2, x3, n=41, hull="affine")
    cvx = slices.plane(x1, x2, x3, n=41, hull="convex")
    mask = (aff.lam >= 0).all(-1)
    assert torch.equal(aff.inside, mask)
    assert torch.equal(cvx.index, mask.nonzero().flatten())
    assert cvx.inside.all() and 0 < cvx.points.shape[0] < 41 * 41
    # the three half-plane inequalities of MATH 8.2 (strict inside, away from the edges)
    a, b = aff.a, aff.b
    strict = (b < 0.5 / SQ3) & (b > SQ3 * a - 1 / SQ3) & (b > -SQ3 * a - 1 / SQ3)
    assert torch.equal(strict, (aff.lam > 0).all(-1))
    # convex-hull points are convex combinations: inside the coordinate-wise hull of the anchors
    lo = torch.minimum(torch.minimum(x1, x2), x3)
    hi = torch.maximum(torch.maximum(x1, x2), x3)
    assert bool(((cvx.points >= lo - 1e-12) & (cvx.points <= hi + 1e-12)).all())


def test_edges_are_the_1d_paths():
    x1, x2, x3 = _anchors()
    A = [torch.tensor(ab, dtype=torch.float64) for ab in slices.ANCHORS_AB]
    X = [x1, x2, x3]
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        ab = (1 - t)[:, None] * A[i] + t[:, None] * A[j]
        lam = slices.barycentric(ab[:, 0], ab[:, 1])
        pts = lam @ torch.stack(X)
        path = slices.path(X[i], X[j], 11, include_end=True)
        assert torch.allclose(pts, path, atol=1e-12)


def test_plane_rejects_bad_input():
    x1, x2, x3 = _anchors()
    with pytest.raises(ValueError, match="hull"):
        slices.plane(x1, x2, x3, hull="ternary")
    with pytest.raises(ValueError, match="shape"):
        slices.plane(x1, x2, x3[:2])


def test_normalized_entropy_range_and_extremes():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 10, generator=g) * 5
    H = slices.normalized_entropy(logits)
    assert H.dtype == torch.float64
    assert bool(((H >= 0) & (H <= 1)).all())
    assert torch.allclose(slices.normalized_entropy(torch.zeros(3, 10)), torch.ones(3, dtype=torch.float64))
    onehot = torch.full((1, 10), -1e4)
    onehot[0, 3] = 1e4
    assert float(slices.normalized_entropy(onehot)) < 1e-12
    # = -sum p log10 p for C = 10 (MATH 8.3)
    p = torch.softmax(logits.double(), -1)
    assert torch.allclose(H, -(p * torch.log10(p)).sum(-1))
