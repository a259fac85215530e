"""Independent curvature references shared by the curvature tests: the brute-force oracle
(``fastgeom.curvature``: metric by jacfwd, its derivatives by autograd) on a feature map."""

import torch
from torch.func import jacfwd

from fastgeom import curvature as cv

D64 = torch.float64


def oracle_R(fmap, x):
    """Brute-force Ricci scalar of the full pullback metric of fmap at x (B, d)."""

    def metric(y):
        J = jacfwd(lambda z: fmap(z[None])[0])(y)
        return J.T @ J

    return cv.ricci_scalar(metric, x)


def oracle_K(fmap, x, u, v):
    """Brute-force Gaussian curvature (R/2 of the 2-D metric) of (a, b) -> fmap(x + a u + b v), per point."""
    out = []
    for i in range(x.shape[0]):

        def metric(ab, i=i):
            J = jacfwd(lambda c: fmap((x[i] + c[0] * u[i] + c[1] * v[i])[None])[0])(ab)
            return J.T @ J

        out.append(cv.ricci_scalar(metric, torch.zeros(1, 2, dtype=D64))[0] / 2)
    return torch.stack(out)
