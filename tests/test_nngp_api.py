"""fastgeom.nngp: closed forms of MATH 4.3 (converted to plain erf), quadrature vs closed forms, errors."""
import math

import pytest
import torch

import fastgeom.nngp as ng

D64 = torch.float64


def test_erf_closed_forms_match_math_4_3_converted():
    x = torch.randn(20, 3, dtype=D64) * 1.5
    sw, sb, d = 1.3, 0.4, 3
    r = (x * x).sum(-1)
    SW, SB = 2 * sw ** 2, 2 * sb ** 2  # erf(z) = erf((sqrt2 z)/sqrt2): sigma_w^2 -> 2 sigma_w^2
    vol = (2 * SW / math.pi) ** (d / 2) * math.sqrt(1 + 2 * SB) * (1 + 2 * SB + 2 * SW * r) ** (-(d + 2) / 4)
    R = -math.pi * (d - 1) * (d + 2) * SW * r / (2 * (1 + 2 * SB) * torch.sqrt(1 + 2 * SB + 2 * SW * r))
    torch.testing.assert_close(ng.volume_element(x, "erf", sw, sb), vol, rtol=1e-13, atol=0)
    torch.testing.assert_close(ng.ricci_scalar(x, "erf", sw, sb), R, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ng.ricci_scalar(x, "erf", sw, sb, convention="paper"), 3 * R, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", ["erf", "z^1", "z^2", "z^3"])
@pytest.mark.parametrize("sb", [0.0, 0.7])
def test_quadrature_matches_closed_forms(act, sb):
    x = torch.randn(30, 3, dtype=D64) + 0.3
    for fn, tol in ((ng.volume_element, 1e-10), (ng.ricci_scalar, 1e-6)):
        a = fn(x, act, 1.2, sb, method="closed")
        q = fn(x, act, 1.2, sb, method="quadrature")
        assert ((a - q).abs() / (1 + a.abs())).max() < tol, (fn.__name__, act)


def test_monomial_sigma_b_zero_closed_form():
    # MATH 4.4 (normalised z^k/sqrt((2k-1)!!)): R = -(d-1)(d-2)(k-1)^2 / (k^2 sw^(2k) |x|^(2k)), scale-free in alpha^-2
    k, d, sw = 3, 4, 0.9
    x = torch.randn(10, d, dtype=D64)
    alpha2 = 15.0  # (2k-1)!! for k = 3: plain z^3 = alpha * normalised
    R = -(d - 1) * (d - 2) * (k - 1) ** 2 / (k ** 2 * sw ** (2 * k) * (x * x).sum(-1) ** k) / alpha2
    torch.testing.assert_close(ng.ricci_scalar(x, "z^3", sw, 0.0), R, rtol=1e-12, atol=0)


def test_metric_coefficients_and_errors():
    f, f1, f2 = ng.metric_coefficients(torch.tensor([0.5, 1.0], dtype=D64), "erf", 1.0, 0.0, 2)
    assert f.shape == f1.shape == f2.shape == (2,)
    g = ng.metric(torch.tensor([[1.0, 0.0]], dtype=D64), "erf")
    torch.testing.assert_close(g[0], torch.diag(torch.stack([f[1] + 2 * f1[1], f[1]])))
    with pytest.raises(ValueError, match="closed form"):
        ng.volume_element(torch.ones(2, 2), "sigmoid", method="closed")
    with pytest.raises(ValueError, match="sigma_w"):
        ng.volume_element(torch.ones(2, 2), "erf", sigma_w=-1.0)
    with pytest.raises(ValueError, match="shape"):
        ng.volume_element(torch.ones(2), "erf")
