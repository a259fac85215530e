"""Infinite-width geometry against very wide random networks (error ~ n^-1/2), NTK metric against
the empirical NTK metric by autograd, Amari-Wu general form against the RBF closed form and against
the mixed derivative of the modified kernel."""

import math

import numpy as np
import torch

import fastgeom.nngp as ng
import fastgeom.shallow as sh

D64 = torch.float64


def _wide(n, d, sw, sb, seed):
    g = torch.Generator().manual_seed(seed)
    return sw * torch.randn(n, d, generator=g, dtype=D64), sb * torch.randn(n, generator=g, dtype=D64)


def test_nngp_matches_wide_nets_with_inverse_sqrt_rate():
    sw, sb = 1.0, 0.5
    x = torch.tensor([[0.3, -0.2], [0.8, 0.5], [-1.0, 0.4]], dtype=D64)
    g_inf = ng.metric(x, "erf", sw, sb)
    widths = [400, 1600, 6400, 25600]
    errs = []
    for n in widths:
        e = []
        for seed in range(6):
            W, b = _wide(n, 2, sw, sb, seed)
            e.append(((sh.metric(W, b, x, "erf") - g_inf).norm(dim=(1, 2)) / g_inf.norm(dim=(1, 2))).mean().item())
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    assert -0.75 < slope < -0.3, (slope, errs)
    # volume element and curvature at the widest net
    W, b = _wide(64000, 2, sw, sb, 99)
    vol, R = ng.volume_element(x, "erf", sw, sb), ng.ricci_scalar(x, "erf", sw, sb)
    assert ((sh.volume_element(W, b, x, "erf") - vol).abs() / vol).max() < 0.02
    assert ((sh.ricci_scalar(W, b, x, "erf") - R).abs() / (1 + R.abs())).max() < 0.05


def _empirical_ntk_metric(W, b, v, x):
    """g_{mu nu} = sum_theta d_mu d_theta f d_nu d_theta f by autograd, f = v . erf(Wx + b) / sqrt(n)."""
    n = W.shape[0]

    def grad_theta(p):
        def f(W_, b_, v_):
            return v_ @ torch.erf(W_ @ p + b_) / math.sqrt(n)

        gW, gb, gv = torch.func.grad(f, argnums=(0, 1, 2))(W, b, v)
        return torch.cat([gW.reshape(-1), gb, gv])

    J = torch.func.vmap(torch.func.jacfwd(grad_theta))(x)  # (N, P, d)
    return J.mT @ J


def test_ntk_metric_matches_wide_empirical_ntk():
    sw, sb, sv = 1.0, 0.6, 1.3
    x = torch.tensor([[0.4, -0.3], [1.0, 0.2]], dtype=D64)
    n = 50000
    W, b = _wide(n, 2, sw, sb, 1)
    v = sv * torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=D64)
    emp = _empirical_ntk_metric(W, b, v, x)
    th = ng.ntk_metric(x, "erf", sw, sb, sv)
    assert ((emp - th).norm(dim=(1, 2)) / th.norm(dim=(1, 2))).max() < 0.05
    torch.testing.assert_close(
        ng.ntk_volume_element(x, "erf", sw, sb, sv), torch.sqrt(torch.linalg.det(th)), rtol=1e-12, atol=0
    )
    # quadrature route agrees with the erf closed form
    torch.testing.assert_close(ng.ntk_metric(x, "erf", sw, sb, sv, method="quadrature"), th, rtol=1e-8, atol=1e-12)


def test_amari_wu_general_form_and_rbf_closed_form():
    x = torch.randn(8, 2, dtype=D64)
    sv = torch.randn(3, 2, dtype=D64)
    h = torch.tensor([1.0, 0.5, 2.0], dtype=D64)
    tau, s = 0.8, 1.3
    rbf = lambda a, c: torch.exp(-((a - c) ** 2).sum() / (2 * s * s))  # noqa: E731
    closed = ng.amari_wu_volume_element(x, sv, tau, "rbf", s, h)
    general = ng.amari_wu_volume_element(x, sv, tau, rbf, s, h)
    torch.testing.assert_close(general, closed, rtol=1e-12, atol=1e-300)

    # independent: mixed derivative of the modified kernel K~(x, y) = c(x) c(y) K(x, y)
    def poly(a, c):
        return (1 + a @ c) ** 3

    def c_of(p):
        return (h * torch.exp(-((p - sv) ** 2).sum(-1) / (2 * tau * tau))).sum()

    def kt(a, c):
        return c_of(a) * c_of(c) * poly(a, c)

    mixed = torch.func.vmap(lambda a: torch.func.jacfwd(torch.func.jacrev(kt, argnums=0), argnums=1)(a, a))(x)
    torch.testing.assert_close(ng.amari_wu_metric(x, sv, tau, poly, h=h), mixed, rtol=1e-12, atol=1e-14)
    # magnification near a support vector: volume at the support vector exceeds the far-field volume
    far = ng.amari_wu_volume_element(torch.full((1, 2), 50.0, dtype=D64), sv, tau, "rbf", s, h)
    assert (ng.amari_wu_volume_element(sv, sv, tau, "rbf", s, h) > far).all()
