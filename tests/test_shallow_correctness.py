"""Shallow-network closed forms against the independent float64 brute-force curvature (MATH 10),
and the special forms of MATH 3.3, 3.6, 3.7."""

import math

import pytest
import torch

import fastgeom.shallow as sh
from fastgeom import activations as A
from fastgeom import curvature as cv
from fastgeom.ops.shallow import reference as ref

D64 = torch.float64


def _net(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=D64),
        0.5 * torch.randn(n, generator=g, dtype=D64),
        0.8 * torch.randn(5, d, generator=g, dtype=D64),
    )


def _metric_fn(W, b, act):
    n = W.shape[0]

    def g(x):
        s = act.d1(W @ x + b)
        return (W * (s * s)[:, None]).T @ W / n

    return g


CASES = [
    (2, 3, "sigmoid"),
    (2, 5, "tanh"),
    (2, 12, "erf"),
    (3, 4, "gelu"),
    (3, 7, "softplus"),
    (3, 9, "sin"),
    (4, 6, "tanh"),
    (4, 11, "z^3"),
    (4, 20, "sigmoid"),
]


@pytest.mark.parametrize("d,n,name", CASES)
def test_ricci_closed_forms_match_brute_force(d, n, name):
    W, b, x = _net(n, d, seed=17 * d + n)
    act = A.get(name)
    bf = cv.ricci_scalar(_metric_fn(W, b, act), x)
    scale = bf.abs().clamp_min(1e-3 * bf.abs().max())
    for R in (
        ref.ricci_scalar(W, b, x, act),
        ref.ricci_scalar_moments(W, b, x, act),
        sh.ricci_scalar(W, b, x, name, backend="torch"),
    ):
        assert ((R - bf).abs() / scale).max() < 1e-8, (R, bf)
    if d == 2:
        assert ((sh.ricci_scalar_2d(W, b, x, name) - bf).abs() / scale).max() < 1e-8
    torch.testing.assert_close(
        sh.metric(W, b, x, name), torch.func.vmap(_metric_fn(W, b, act))(x), rtol=1e-13, atol=1e-15
    )


def test_paper_convention_is_three_times_brute_force():
    W, b, x = _net(6, 2, seed=3)
    bf = cv.ricci_scalar(_metric_fn(W, b, A.get("sigmoid")), x)
    torch.testing.assert_close(sh.ricci_scalar(W, b, x, "sigmoid", convention="paper"), 3 * bf, rtol=1e-9, atol=1e-12)


def test_square_network_is_flat():
    W, b, x = _net(3, 3, seed=5)
    R = sh.ricci_scalar(W, b, x, "tanh")
    assert R.abs().max() < 1e-10 * (1 + sh.metric(W, b, x, "tanh").abs().max())


def test_two_d_determinant_minors_form():
    W, b, x = _net(9, 2, seed=8)
    act = A.get("erf")
    torch.testing.assert_close(
        ref.det_2d(W, b, x, act), torch.linalg.det(sh.metric(W, b, x, "erf")), rtol=1e-12, atol=0
    )


def _rot(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=D64)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_three_unit_symmetric_example(name):
    """MATH 3.7: three units at 120 degrees. Zero biases: six-fold symmetry (rotation by 60 degrees maps
    w_j to -w_k and sigma'^2, P_j P_k are even under z -> -z); equal non-zero biases: three-fold only."""
    W = (
        torch.stack(
            [torch.tensor([math.cos(a), math.sin(a)], dtype=D64) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        )
        * 1.5
    )
    x = torch.rand(25, 2, dtype=D64) * 2 - 1
    for bval, sixfold in ((0.0, True), (0.7, False)):
        b = torch.full((3,), bval, dtype=D64)
        R = sh.ricci_scalar_3units(W, b, x, name)
        torch.testing.assert_close(R, sh.ricci_scalar(W, b, x, name), rtol=1e-10, atol=1e-12)
        for fn in (sh.ricci_scalar_3units, sh.volume_element):
            v = fn(W, b, x, name)
            torch.testing.assert_close(fn(W, b, x @ _rot(2 * math.pi / 3).T, name), v, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(
                fn(W, b, x * torch.tensor([1.0, -1.0], dtype=D64), name), v, rtol=1e-10, atol=1e-12
            )
            v60 = fn(W, b, x @ _rot(math.pi / 3).T, name)
            if sixfold:
                torch.testing.assert_close(v60, v, rtol=1e-10, atol=1e-12)
            else:
                assert ((v60 - v).abs() / v.abs().max()).max() > 1e-3
