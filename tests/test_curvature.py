"""Brute-force curvature (fastgeom.curvature) on spaces of known curvature, in the textbook convention."""

import pytest
import torch

from fastgeom import curvature as cv

D64 = torch.float64
RHO = 1.7


def sphere2(x):  # polar coordinates (theta, phi)
    return torch.diag(torch.stack([RHO**2 + 0 * x[0], RHO**2 * torch.sin(x[0]) ** 2]))


def sphere3(x):  # hyperspherical coordinates (chi, theta, phi)
    s = torch.sin(x[0]) ** 2
    return RHO**2 * torch.diag(torch.stack([1 + 0 * x[0], s, s * torch.sin(x[1]) ** 2]))


def halfplane(x):
    return torch.eye(2, dtype=x.dtype) / x[1] ** 2


def stereo3(x):  # 3-sphere in stereographic coordinates: conformally flat, not diagonal-trivial
    return (2 * RHO / (1 + (x * x).sum())) ** 2 * torch.eye(3, dtype=x.dtype)


X = torch.rand(6, 3, dtype=D64) * 1.2 + 0.3


@pytest.mark.parametrize(
    "fn,d,R", [(sphere2, 2, 2 / RHO**2), (sphere3, 3, 6 / RHO**2), (halfplane, 2, -2.0), (stereo3, 3, 6 / RHO**2)]
)
def test_known_scalar_curvature(fn, d, R):
    torch.testing.assert_close(cv.ricci_scalar(fn, X[:, :d]), torch.full((6,), R, dtype=D64), rtol=1e-12, atol=1e-12)


def test_riemann_symmetries_and_2d_identity():
    x = X[:, :2]
    Rm = cv.riemann_tensor(sphere2, x)  # R^a_bcd
    g = torch.func.vmap(sphere2)(x)
    Rl = torch.einsum("nae,nebcd->nabcd", g, Rm)  # R_abcd
    torch.testing.assert_close(Rl, -Rl.permute(0, 2, 1, 3, 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(Rl, -Rl.permute(0, 1, 2, 4, 3), atol=1e-12, rtol=0)
    # in 2-D: R_abcd = R/2 (g_ac g_bd - g_ad g_bc)
    R = cv.ricci_scalar(sphere2, x)
    ref = (
        0.5
        * R[:, None, None, None, None]
        * (torch.einsum("nac,nbd->nabcd", g, g) - torch.einsum("nad,nbc->nabcd", g, g))
    )
    torch.testing.assert_close(Rl, ref, atol=1e-12, rtol=0)


def test_flat_metric_in_curvilinear_coordinates_is_flat():
    def polar(x):  # Euclidean plane in polar coordinates (r, phi)
        return torch.diag(torch.stack([1 + 0 * x[0], x[0] ** 2]))

    assert cv.ricci_scalar(polar, X[:, :2]).abs().max() < 1e-12


def test_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        cv.ricci_scalar(sphere2, torch.ones(2))
