"""Independent curvature references shared by the curvature tests: the brute-force oracle
(``fastgeom.curvature``: metric by jacfwd, its derivatives by autograd) on a feature map."""

import torch
from torch import nn
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


def small_cnn():
    """A float64 conv-BN-tanh-conv-GELU-linear net (1x6x7 inputs -> 3), BN with non-trivial running statistics."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 2, 3),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(2 * 2 * 3, 3),
    ).double()
    bn = net[1]
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 2.0)
    return net
