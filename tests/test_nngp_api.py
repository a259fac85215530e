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
    SW, SB = 2 * sw**2, 2 * sb**2  # erf(z) = erf((sqrt2 z)/sqrt2): sigma_w^2 -> 2 sigma_w^2
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
    R = -(d - 1) * (d - 2) * (k - 1) ** 2 / (k**2 * sw ** (2 * k) * (x * x).sum(-1) ** k) / alpha2
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


# ------------------------------------------------------------------ large |x| against mpmath


def _mp_ricci_logvol(act: str, r: float, d: int, sw: float, sb: float, dps: int = 30):
    """(Ricci, log vol) of the NNGP metric at |x|^2 = r from xi, xi', xi'' by mpmath quadrature with the
    q-derivatives taken on the Gaussian (exact identities), then the boxed formula of MATH 4.2."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(dps):
        if act == "tanh":

            def h(z):
                return mpmath.sech(z) ** 4
        elif act == "sigmoid":

            def h(z):
                return (mpmath.exp(-abs(z)) / (1 + mpmath.exp(-abs(z))) ** 2) ** 2
        else:  # gelu: Phi(z) + z phi(z)

            def h(z):
                return (mpmath.ncdf(z) + z * mpmath.npdf(z)) ** 2

        q = mpmath.mpf(sw) ** 2 * r + mpmath.mpf(sb) ** 2
        top = 14 * mpmath.sqrt(q)
        pts = sorted({-top, -60, -10, 0, 10, 60, top} if act == "gelu" else {-60, -10, 0, 10, 60})

        def E(k):
            return mpmath.quad(lambda z: h(z) * (z * z / q) ** k * mpmath.npdf(z, 0, mpmath.sqrt(q)), pts)

        M0, M2, M4 = E(0), E(1), E(2)
        xi, dxi, ddxi = M0, (M2 - M0) / (2 * q), (M4 - 6 * M2 + 3 * M0) / (4 * q * q)
        s2 = mpmath.mpf(sw) ** 2
        f, f1, f2 = s2 * xi, s2**2 * dxi, s2**3 * ddxi
        num = (d - 1) * r * f1 * ((d + 2) * f * f1 + 2 * (d - 4) * r * f1 * f1 + 4 * r * f * f2)
        R = -num / (f * f * (f + 2 * r * f1) ** 2)
        lv = ((d - 1) * mpmath.log(f) + mpmath.log(f + 2 * r * f1)) / 2
        return float(R), float(lv)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("v", [30.0, 100.0, 1e4])
def test_quadrature_at_large_x_matches_mpmath(act, v):
    """The issue's cases: (30, 30) was 2% off, (100, 100) had the wrong sign, tanh was NaN, 1e4 took a minute."""
    x = torch.tensor([[v, v]], dtype=D64)
    R_ref, lv_ref = _mp_ricci_logvol(act, 2 * v * v, 2, 1.0, 0.0)
    R = float(ng.ricci_scalar(x, act))
    lv = float(ng.log_volume_element(x, act))
    assert abs(lv - lv_ref) <= 1e-11 * (1 + abs(lv_ref)), (lv, lv_ref)
    assert abs(R - R_ref) <= 1e-8 * abs(R_ref) + 1e-14, (R, R_ref)


def test_quadrature_with_bias_at_moderate_and_large_x_matches_mpmath():
    for v in (3.0, 300.0):
        x = torch.tensor([[v, 0.0, -v]], dtype=D64)
        R_ref, lv_ref = _mp_ricci_logvol("tanh", 2 * v * v, 3, 0.8, 0.6)
        assert abs(float(ng.ricci_scalar(x, "tanh", 0.8, 0.6)) - R_ref) <= 1e-8 * abs(R_ref)
        assert abs(float(ng.log_volume_element(x, "tanh", 0.8, 0.6)) - lv_ref) <= 1e-11 * (1 + abs(lv_ref))


@pytest.mark.parametrize("v", [1e4, 1e6, 1e8])
def test_erf_closed_form_at_large_x(v):
    """MATH 4.3 (converted to plain erf) stays accurate where f + 2 r f' and the Ricci numerator cancel."""
    x = torch.tensor([[v, -v, 0.5 * v]], dtype=D64)
    sw, sb, d = 1.0, 0.3, 3
    r = float((x * x).sum())
    SW, SB = 2 * sw**2, 2 * sb**2
    R = -math.pi * (d - 1) * (d + 2) * SW * r / (2 * (1 + 2 * SB) * math.sqrt(1 + 2 * SB + 2 * SW * r))
    lvol = (
        (d / 2) * math.log(2 * SW / math.pi)
        + 0.5 * math.log(1 + 2 * SB)
        - (d + 2) / 4 * math.log(1 + 2 * SB + 2 * SW * r)
    )
    assert abs(float(ng.ricci_scalar(x, "erf", sw, sb)) / R - 1) < 1e-12
    assert abs(float(ng.log_volume_element(x, "erf", sw, sb)) - lvol) < 1e-12 * abs(lvol)
    if v <= 1e4:  # the quadrature agrees with the closed form there too
        assert abs(float(ng.ricci_scalar(x, "erf", sw, sb, method="quadrature")) / R - 1) < 1e-10


def test_quadrature_raises_outside_its_validated_range():
    with pytest.raises(ValueError, match="validated range"):
        ng.ricci_scalar(torch.tensor([[1e6, 0.0]], dtype=D64), "tanh")


def test_sin_closed_form_matches_quadrature():
    x = torch.randn(8, 2, dtype=D64)
    for fn in (ng.log_volume_element, ng.ricci_scalar):
        a, q = fn(x, "sin", 0.9, 0.2, method="closed"), fn(x, "sin", 0.9, 0.2, method="quadrature")
        assert ((a - q).abs() / (1 + a.abs())).max() < 1e-9


def test_complex_inputs_raise_type_error():
    with pytest.raises(TypeError, match="complex"):
        ng.volume_element(torch.ones(2, 2, dtype=torch.complex128), "erf")
    with pytest.raises(TypeError, match="complex"):
        ng.moments(torch.ones(2, dtype=torch.complex128), "erf")
