"""Saturated activations (engine/stable.py): derivatives of sigmoid, tanh, SiLU, logsigmoid, softplus,
Mish and GELU under stable_activations() against mpmath closed forms, first and second order, under the
torch.func transforms the engines use; then every method (dense, streamed, linearized, auto, randomized)
and the curvature routes on shallow nets at saturated pre-activations against fastgeom.shallow's
closed forms (whose derivatives are sigma(z) sigma(-z), cosh^-2: an independent float64 reference)."""

import math
import warnings

import mpmath as mp
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

import fastgeom as fg
from fastgeom import shallow as sh
from fastgeom.engine.guards import ad_guards
from fastgeom.engine.stable import stable_activations, stable_active

mp.mp.dps = 60
D64, F32 = torch.float64, torch.float32


def _s(z):
    return 1 / (1 + mp.e ** (-z))


def _sp(z):
    return mp.log(1 + mp.e**z)


# name -> (torch function, f', f'' as mpmath closed forms or None for mpmath's differentiation of f)
CASES = {
    "sigmoid": (torch.sigmoid, lambda z: _s(z) * _s(-z), lambda z: _s(z) * _s(-z) * (_s(-z) - _s(z)), None),
    "Tensor.sigmoid": (
        lambda t: t.sigmoid(),
        lambda z: _s(z) * _s(-z),
        lambda z: _s(z) * _s(-z) * (_s(-z) - _s(z)),
        None,
    ),
    "tanh": (torch.tanh, lambda z: mp.sech(z) ** 2, lambda z: -2 * mp.tanh(z) * mp.sech(z) ** 2, None),
    "F.tanh": (F.tanh, lambda z: mp.sech(z) ** 2, lambda z: -2 * mp.tanh(z) * mp.sech(z) ** 2, None),
    "nn.Tanh": (nn.Tanh(), lambda z: mp.sech(z) ** 2, lambda z: -2 * mp.tanh(z) * mp.sech(z) ** 2, None),
    "tanh_": (
        lambda t: (t * 1.0).tanh_(),
        lambda z: mp.sech(z) ** 2,
        lambda z: -2 * mp.tanh(z) * mp.sech(z) ** 2,
        None,
    ),
    "silu": (F.silu, lambda z: _s(z) * (1 + z * _s(-z)), lambda z: _s(z) * _s(-z) * (2 + z * (_s(-z) - _s(z))), None),
    "logsigmoid": (F.logsigmoid, lambda z: _s(-z), lambda z: -_s(z) * _s(-z), None),
    # z < threshold = 20 here, where torch's softplus is log(1 + e^z)
    "softplus": (F.softplus, lambda z: _s(z), lambda z: _s(z) * _s(-z), None),
    "softplus(beta=2)": (
        lambda t: F.softplus(t, beta=2.0, threshold=50.0),
        lambda z: _s(2 * z),
        lambda z: 2 * _s(2 * z) * _s(-2 * z),
        None,
    ),
    "mish": (F.mish, None, None, lambda z: z * mp.tanh(_sp(z))),
    "silu(inplace)": (lambda t: F.silu(t * 1.0, inplace=True), lambda z: _s(z) * (1 + z * _s(-z)), None, None),
    "gelu": (F.gelu, lambda z: mp.ncdf(z) + z * mp.npdf(z), lambda z: (2 - z * z) * mp.npdf(z), None),
    "gelu(tanh)": (
        lambda t: F.gelu(t, approximate="tanh"),
        None,
        None,
        lambda z: z * _s(2 * mp.sqrt(2 / mp.pi) * (z + mp.mpf("0.044715") * z**3)),
    ),
}
ZS = {
    D64: [-36.0, -19.5, -12.0, -4.0, -0.7, 0.3, 4.0, 12.0, 17.0, 19.5],
    F32: [-16.0, -11.0, -8.0, -3.0, 0.3, 3.0, 8.0, 11.0, 16.0],
}
# relative tolerances: a few ulp times the condition number of the derivative in z (|z|^2 for GELU's e^{-z^2/2})
TOL = {D64: 2e-14, F32: 2e-5}


def _ref(name, z, order):
    _, d1, d2, f = CASES[name]
    z = mp.mpf(z)
    if f is not None:
        return mp.diff(f, z, order)
    if order == 2 and d2 is None:
        return mp.diff(d1, z)
    return (d1 if order == 1 else d2)(z)


def _derivatives(f, z):
    """{route: (order, thunk)}: the ways the engines and the curvature code differentiate."""
    one = torch.ones_like(z)

    def d1f(t):
        return jvp(f, (t,), (torch.ones_like(t),))[1]

    def basis_pass():  # surfaces._full_basis: a vmapped JVP of vmapped JVPs
        return vmap(lambda b: jvp(lambda y: vmap(lambda a: jvp(f, (y,), (a,))[1])(one[None]), (z,), (b,))[1])(
            one[None]
        )[0, 0]

    def autograd(order):
        zz = z.clone().requires_grad_()
        (g1,) = torch.autograd.grad(f(zz).sum(), zz, create_graph=True)
        return g1.detach() if order == 1 else torch.autograd.grad(g1.sum(), zz)[0]

    return {
        "vjp": (1, lambda: vjp(f, z)[1](one)[0]),
        "jvp": (1, lambda: jvp(f, (z,), (one,))[1]),
        "vmap(jacrev)": (1, lambda: vmap(jacrev(f))(z[:, None])[:, 0, 0]),
        "vmap(jacfwd)": (1, lambda: vmap(jacfwd(f))(z[:, None])[:, 0, 0]),
        "autograd": (1, lambda: autograd(1)),
        "jvp(jvp)": (2, lambda: jvp(d1f, (z,), (one,))[1]),
        "vmap(jvp(vmap(jvp)))": (2, basis_pass),
        "jacrev(jacrev)": (2, lambda: vmap(jacrev(jacrev(lambda t: f(t).sum())))(z[:, None])[:, 0, 0]),
        "jacfwd(jacrev)": (2, lambda: vmap(jacfwd(jacrev(lambda t: f(t).sum())))(z[:, None])[:, 0, 0]),
        "vjp(jvp)": (2, lambda: vjp(d1f, z)[1](one)[0]),
        "autograd double backward": (2, lambda: autograd(2)),
    }


def _gelu_mp(name, z):
    if name == "gelu":
        return z * mp.ncdf(z)
    return z * _s(2 * mp.sqrt(2 / mp.pi) * (z + mp.mpf("0.044715") * z**3))


@pytest.mark.parametrize("dtype", [D64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_stable_derivatives_against_mpmath(name, dtype):
    f = CASES[name][0]
    z = torch.tensor(ZS[dtype], dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    with stable_activations():
        val = f(z)
    eps = torch.finfo(dtype).eps
    if name.startswith("gelu"):  # its stable form, against mpmath (torch's 1 + erf cancels for z < 0)
        for i, zi in enumerate(ZS[dtype]):
            want = _gelu_mp(name, mp.mpf(zi))
            if abs(want) > 1e6 * tiny:
                assert float(abs(mp.mpf(float(val[i])) - want) / abs(want)) <= 8 * eps * max(1.0, zi * zi), (zi, val[i])
    else:  # torch's own values to rounding
        assert torch.allclose(val, f(z), rtol=8 * eps, atol=0)
    for route, (order, thunk) in _derivatives(f, z).items():
        if name in ("tanh_", "silu(inplace)") and route == "vmap(jvp(vmap(jvp)))":
            continue  # torch itself refuses in-place ops there ("ZeroTensors are immutable"), mode or not
        with stable_activations():
            d = thunk()
        for i, zi in enumerate(ZS[dtype]):
            want = _ref(name, zi, order)
            if abs(want) < 1e6 * tiny:  # below the dtype's range: no relative accuracy to ask for
                continue
            err = float(abs(mp.mpf(float(d[i])) - want) / abs(want))
            cond = max(1.0, zi * zi) if name.startswith("gelu") else 1.0
            if abs(zi + 0.7) < 0.1 and name.startswith("gelu"):  # GELU' has a zero near -0.75
                cond = 1e3
            assert err <= TOL[dtype] * cond, (name, route, zi, float(d[i]), float(want), err)


def test_torch_formulas_cancel_without_the_mode():
    """The premise: plain torch autograd loses saturated derivatives (so the tests above test something)."""
    z = torch.tensor([36.0], dtype=D64)
    d_sig = vjp(torch.sigmoid, z)[1](torch.ones_like(z))[0]
    d_tanh = vjp(torch.tanh, z)[1](torch.ones_like(z))[0]
    assert abs(float(d_sig) / float(_s(mp.mpf(36)) * _s(mp.mpf(-36))) - 1) > 1e-2
    assert float(d_tanh) == 0.0
    with stable_activations():
        d_tanh = vjp(torch.tanh, z)[1](torch.ones_like(z))[0]
    assert float(d_tanh) == pytest.approx(float(mp.sech(36) ** 2), rel=1e-14)


def test_mode_leaves_other_calls_alone_and_nests():
    z = torch.tensor([0.5, -3.0], dtype=D64)
    with ad_guards():
        assert stable_active()
        with ad_guards():  # nested guards: one mode on the stack
            assert len(torch.overrides._get_current_function_mode_stack()) == 1
        assert torch.equal(torch.relu(z), z.clamp_min(0))
        assert torch.equal(
            torch.sigmoid(torch.tensor([0, 1])), torch.sigmoid(torch.tensor([0.0, 1.0]))
        )  # integer: torch's
        out = torch.empty(2, dtype=D64)
        torch.sigmoid(z, out=out)  # out= is not routed: torch's own
        assert torch.equal(out, torch.sigmoid(z))
        x = z.clone()
        x.sigmoid_()
        assert torch.allclose(x, torch.sigmoid(z), rtol=1e-15, atol=0)
    assert not stable_active()


# ---------------------------------------------------------------- shallow nets at saturated pre-activations
class Shallow(nn.Module):
    """sigma(x W^T + b) / sqrt(n): fastgeom.shallow's feature map."""

    def __init__(self, W, b, act):
        super().__init__()
        self.lin = nn.Linear(W.shape[1], W.shape[0]).to(W.dtype)
        with torch.no_grad():
            self.lin.weight.copy_(W)
            self.lin.bias.copy_(b)
        self.act = act
        self.n = W.shape[0]

    def forward(self, x):
        return self.act(self.lin(x)) / math.sqrt(self.n)


def saturated(n, d, dtype, zlo, zhi, B=5, seed=0, signs=True):
    """A shallow net and B points whose pre-activations have |z| in [zlo, zhi] (both signs)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, dtype=D64, generator=g)
    x = torch.randn(B, d, dtype=D64, generator=g) * 0.05
    mag = torch.rand(n, dtype=D64, generator=g) * (zhi - zlo) + zlo
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(D64) if signs else torch.ones(n, dtype=D64)
    b = mag * sign - W @ x.mean(0)
    return W.to(dtype), b.to(dtype), x.to(dtype)


ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
# |z| where torch's derivative has lost digits: float64 sigmoid 1e-3..4e-2 at 30-36, tanh all of them past 19;
# float32 sigmoid 1e-2..1 at 12-17, tanh all past 9
RANGES = {D64: (24.0, 36.0), F32: (9.0, 15.0)}
LV_TOL = {D64: 1e-11, F32: 1e-4}


def _ref_logvol(W, b, x, act):
    return sh.log_volume_element(W.double(), b.double(), x.double(), act, backend="torch")


@pytest.mark.parametrize("dtype", [D64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("n,d", [(5, 7), (9, 4)], ids=["submersion", "immersion"])
@pytest.mark.parametrize("method", ["dense", "streamed", "linearized", "auto"])
def test_exact_methods_at_saturation(method, n, d, act, dtype):
    W, b, x = saturated(n, d, dtype, *RANGES[dtype])
    net = Shallow(W, b, ACTS[act]())
    z = x.double() @ W.double().T + b.double()
    assert float(z.abs().min()) >= RANGES[dtype][0] - 1
    ref = _ref_logvol(W, b, x, act)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PrecisionWarning for float32's graded units
        got = fg.logvol(net, x, method=method, progress=False)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, ref, rtol=0, atol=LV_TOL[dtype]), (got - ref).abs().max()


@pytest.mark.parametrize("act", list(ACTS))
def test_randomized_at_saturation(act):
    # d_in = 1: one singular value, so every Rademacher probe's quadrature is exact and the estimate has no noise
    W, b, x = saturated(6, 1, D64, *RANGES[D64], B=4)
    net = Shallow(W, b, ACTS[act]())
    ref = _ref_logvol(W, b, x, act)
    got = fg.logvol(net, x, method="randomized", progress=False, seed=0)
    assert torch.allclose(got, ref, rtol=0, atol=1e-11), (got - ref).abs().max()


CURV_ACTS = {
    "sigmoid": (nn.Sigmoid, (24.0, 36.0)),
    "tanh": (nn.Tanh, (20.0, 30.0)),
    "softplus": (nn.Softplus, (13.0, 19.0)),
}


@pytest.mark.parametrize("act", list(CURV_ACTS))
def test_curvature_at_saturation(act):
    """Gaussian (d = 2: R = 2K) and scalar curvature through nested forward mode, against shallow.ricci_scalar.

    torch's own second derivatives are off by 1e-2 (sigmoid at 36), entirely (tanh) and 1e-9..1e-8 (softplus
    at 13-19) here."""
    mod, rng = CURV_ACTS[act]
    W, b, x = saturated(7, 2, D64, *rng, signs=act != "softplus")
    net = Shallow(W, b, mod())
    R_ref = sh.ricci_scalar(W, b, x, act, backend="torch")
    u, v = torch.tensor([1.0, 0.0], dtype=D64), torch.tensor([0.3, 1.0], dtype=D64)
    K = fg.gaussian_curvature(net, x, u, v)
    R = fg.scalar_curvature(net, x)
    assert torch.allclose(2 * K, R_ref, rtol=1e-11, atol=0), ((2 * K - R_ref) / R_ref).abs().max()
    assert torch.allclose(R, R_ref, rtol=1e-11, atol=0), ((R - R_ref) / R_ref).abs().max()


def test_float32_curvature_at_saturation():
    W, b, x = saturated(7, 2, F32, 9.0, 14.0)
    net = Shallow(W, b, nn.Tanh())
    R_ref = sh.ricci_scalar(W.double(), b.double(), x.double(), "tanh", backend="torch")
    R = fg.scalar_curvature(net, x)
    assert torch.allclose(R, R_ref, rtol=2e-4, atol=0), ((R - R_ref) / R_ref).abs().max()


def test_path_length_at_saturation():
    """paths.path_length (JVPs at quadrature nodes) on a saturated tanh net against the closed-form metric."""
    W, b, x = saturated(6, 2, D64, 22.0, 30.0, B=2)
    net = Shallow(W, b, nn.Tanh())
    path = torch.stack([x[0], x[0] + torch.tensor([1e-3, 0.0], dtype=D64)])
    g = sh.metric(W, b, path[:1], "tanh", backend="torch")[0]
    dx = path[1] - path[0]
    want = float(torch.sqrt(dx @ g @ dx))  # the segment is short: the metric is nearly constant along it
    got = float(fg.Geometry(net).path_length(path))
    assert got == pytest.approx(want, rel=5e-3)
    assert got > 0
