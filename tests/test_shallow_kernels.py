"""Fused shallow-geometry kernels (Triton under TRITON_INTERPRET=1, fastgeom._C on CPU; CUDA and
Triton on GPU when present) against the float64 torch reference, at odd sizes; dispatch rules."""

import math

import pytest
import torch

import fastgeom.shallow as sh
from fastgeom import activations as A
from fastgeom._ext import ext
from fastgeom.ops import shallow as op
from fastgeom.ops.shallow import reference as ref

D64 = torch.float64
ALL = ["sigmoid", "tanh", "erf", "gelu", "softplus", "sin", "z^1", "z^2", "z^3"]
has_cpp = ext.has_op("shallow_geometry")
needs_cpp = pytest.mark.skipif(not has_cpp, reason="fastgeom._C not built here (make ext)")


def _net(n, d, N, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=D64)
    b = torch.randn(n, generator=g, dtype=D64)
    x = 0.8 * torch.randn(N, d, generator=g, dtype=D64)
    return W.to(device), b.to(device), x.to(device)


def _compare(out, W, b, x, act, rtol_R=1e-9):
    """Log volume: both sides factor diag(s) W / sqrt(n) (kernels by streaming Givens QR), error ~ eps * cond(J).
    The kernels' Ricci scalar is the
    difference |T|^2 - |v|^2 of whitened moments, accurate to eps * (|T|^2 + |v|^2) / n^2 (large when a
    unit carries a whole direction, e.g. n = d with saturated units; the reference's G then carries
    errors ~ eps * cond(J) too)."""
    g, lv, R = out
    gr = ref.metric(W, b, x, act)
    torch.testing.assert_close(g, gr, rtol=1e-12, atol=1e-14)
    condJ = torch.linalg.cond(gr).sqrt()
    assert ((lv - ref.log_volume_element(W, b, x, act)).abs() <= 1e-12 * (1 + condJ)).all()
    Rr = ref.ricci_scalar(W, b, x, act)
    U, P = ref._whitened(W, b, x, act)
    mag = ((P[:, :, None] * (U * U).sum(-1, keepdim=True) * U).sum(1) ** 2).sum(-1) / W.shape[0] ** 2  # |v|^2/n^2
    # both sides carry rounding ~ eps * mag * cond(J) (e.g. n = d, where the true R is 0)
    assert ((R - Rr).abs() <= rtol_R * (1 + Rr.abs()) + 1e-15 * mag * (1 + condJ)).all()


@pytest.mark.parametrize(
    "name,n,d", [("sigmoid", 13, 2), ("tanh", 37, 3), ("gelu", 70, 4), ("z^3", 5, 1), ("erf", 3, 3)]
)
def test_triton_matches_reference(name, n, d):
    from fastgeom.ops.shallow import triton as tr

    act = A.get(name)
    W, b, x = _net(n, d, 19, seed=n + d)
    _compare(tr.geometry(W, b, x, act.code, act.power, True), W, b, x, act)


@needs_cpp
@pytest.mark.parametrize("name", ALL)
# n = d is left out: there R == 0 exactly and both forms return rounding noise of size eps * |v|^2/n^2 * cond(J)
# (up to 1e31 for saturated erf units), which is not a comparison (test_square_network_is_flat covers n = d).
@pytest.mark.parametrize("n,d", [(1, 1), (7, 1), (13, 2), (5, 3), (37, 3), (5, 4), (70, 4)])
def test_cpp_matches_reference(name, n, d):
    act = A.get(name)
    W, b, x = _net(n, d, 23, seed=3 * n + d)
    _compare(torch.ops.fastgeom.shallow_geometry(W, b, x, act.code, act.power, True), W, b, x, act)


@needs_cpp
def test_cpp_public_api_and_no_ricci_flag():
    W, b, x = _net(250, 2, 41, seed=1)
    for fn in (sh.metric, sh.log_volume_element, sh.volume_element, sh.ricci_scalar):
        torch.testing.assert_close(
            fn(W, b, x, "sigmoid", backend="cpp"), fn(W, b, x, "sigmoid", backend="torch"), rtol=1e-10, atol=1e-13
        )
    g, lv, R = torch.ops.fastgeom.shallow_geometry(W, b, x, 0, 0, False)
    assert torch.isnan(R).all() and torch.isfinite(lv).all()
    assert op.pick("auto", A.get("sigmoid"), 2, x.device, 250) == "cpp"
    with pytest.raises(RuntimeError, match="d = 5|1 <= d <= 4"):
        torch.ops.fastgeom.shallow_geometry(*_net(6, 5, 3, seed=0), 0, 0, True)


def test_dispatch_falls_back_to_reference():
    custom = A.Activation("cube", lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z)
    assert op.pick("auto", custom, 2, torch.device("cpu")) == "torch"
    assert op.pick("auto", A.get("tanh"), 9, torch.device("cpu")) == "torch"
    assert op.pick("auto", A.get("tanh"), 3, torch.device("cpu"), n=2) == "torch"
    W, b, x = _net(6, 2, 5, seed=2)
    torch.testing.assert_close(sh.ricci_scalar(W, b, x, custom), sh.ricci_scalar(W, b, x, "z^3", backend="torch"))


def test_large_d_log_volume_is_column_scaling_exact():
    """784 -> 2000 style (scaled down): log volume by pivoted QR of diag(s) W / sqrt(n); scaling input
    column a by c_a adds sum log c_a exactly, even for c spanning 30 decades (a log-det of g would not)."""
    n, d = 90, 40
    W, b, x = _net(n, d, 6, seed=4)
    x = x / math.sqrt(d)
    c = torch.logspace(-30, 0, d, dtype=D64)
    base = sh.log_volume_element(W, b, x, "sigmoid")
    scaled = sh.log_volume_element(W * c, b, x / c, "sigmoid")  # same preactivations, J columns scaled by c
    torch.testing.assert_close(scaled, base + torch.log(c).sum(), rtol=1e-12, atol=1e-9)
    s = torch.sigmoid(x @ W.T + b)
    J = (s * (1 - s))[:, :, None] * W / math.sqrt(n)
    torch.testing.assert_close(base, 0.5 * torch.logdet(J.mT @ J), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_match_reference(backend):
    for name, n, d in [("sigmoid", 250, 2), ("tanh", 37, 3), ("gelu", 2000, 2), ("z^3", 70, 4), ("erf", 8, 1)]:
        act = A.get(name)
        W, b, x = _net(n, d, 1001, seed=n, device="cuda")
        out = op.geometry(W, b, x, act, backend)
        Wc, bc, xc = W.cpu(), b.cpu(), x.cpu()
        _compare(tuple(out[k].cpu() for k in ("metric", "logvol", "ricci")), Wc, bc, xc, act, rtol_R=1e-8)


# ---------------------------------------------------------------- saturation (issue 14 item 5)

# pre-activation scale per activation: sigma' ~ 1e-300 (sigmoid, tanh, erf, gelu's left tail, softplus),
# a large argument (sin: cos(z) is conditioned ~ |z| eps, so 1e3 keeps the comparison meaningful), or huge
# polynomial values (z^k)
SATURATION = {
    "sigmoid": 700.0,
    "tanh": 350.0,
    "erf": 26.0,
    "gelu": 37.0,
    "softplus": 700.0,
    "sin": 1e3,
    "z^1": 1e100,
    "z^2": 1e100,
    "z^3": 1e60,
}


def _saturated_net(name, d, mixed):
    """6 units, biases +-Z (mixed: the last three units unsaturated), x near 0: z = b + O(0.01)."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(6, d, generator=g, dtype=D64)
    x = 0.01 * torch.randn(5, d, generator=g, dtype=D64)
    b = SATURATION[name] * torch.tensor([1.0, -1.0, 0.9, -0.8, 0.5, -0.3], dtype=D64)
    if mixed:
        b[3:] = torch.tensor([0.3, -0.2, 0.1], dtype=D64)
    return W, b, x


def _saturated_backends():
    out = ["triton"]
    if has_cpp:
        out.append("cpp")
    return out


def _compare_saturated(out, W, b, x, act):
    """Metric and log volume to relative accuracy (finite wherever the reference is); Ricci where the
    reference has it (a unit whose sigma' sigma'' underflows makes both sides NaN, never 0 or a number)."""
    g, lv, R = out
    gr, lvr = ref.metric(W, b, x, act), ref.log_volume_element(W, b, x, act)
    Rr = ref.ricci_scalar_auto(W, b, x, act)
    torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-13 * float(gr.abs().max()))
    assert torch.isfinite(lvr).all()
    torch.testing.assert_close(lv, lvr, rtol=1e-12, atol=1e-11)
    fin = torch.isfinite(Rr)
    assert torch.equal(torch.isfinite(R), fin), (R, Rr)
    assert ((R[fin] - Rr[fin]).abs() <= 1e-8 * (1 + Rr[fin].abs())).all(), (R, Rr)


@pytest.mark.parametrize("backend", _saturated_backends())
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mixed", [True, False])
def test_saturated_preactivations_match_reference(backend, name, mixed):
    act = A.get(name)
    W, b, x = _saturated_net(name, 2, mixed)
    if backend == "triton":
        from fastgeom.ops.shallow import triton as tr

        out = tr.geometry(W, b, x, act.code, act.power, True)
    else:
        out = torch.ops.fastgeom.shallow_geometry(W, b, x, act.code, act.power, True)
    _compare_saturated(out, W, b, x, act)


@pytest.mark.parametrize("backend", ["torch"] + _saturated_backends())
def test_issue_example_erf_saturated_unit_is_finite(backend):
    """W = I, b = (20, 0), x = 0, erf: the C++ kernel gave NaN (sqrt(a^2 + b^2) underflowed) against -400.45."""
    W, b, x = torch.eye(2, dtype=D64), torch.tensor([20.0, 0.0], dtype=D64), torch.zeros(1, 2, dtype=D64)
    out = sh.geometry(W, b, x, "erf", backend=backend)
    expect = float(
        torch.log(A.get("erf").d1(torch.tensor(20.0, dtype=D64)) * A.get("erf").d1(torch.tensor(0.0, dtype=D64)) / 2)
    )
    assert abs(float(out["logvol"][0]) - expect) < 1e-12 * abs(expect)
    assert abs(expect + 400.4516) < 1e-3


def test_triton_gelu_derivative_tail_matches_erfc_reference():
    """1 + erf(z / sqrt 2) cancels for negative z (1% off in GELU' below z ~ -8.3): the Triton GELU' (Mills-ratio
    continued fraction below z = -3) keeps relative accuracy down to z = -12 and past it (z = -37: sigma' ~ 1e-297).
    With n = d = 1 and W = 1 the log volume is log|sigma'(z)| (no squaring, so no underflow)."""
    from fastgeom.ops.shallow import triton as tr

    z = torch.cat(
        [torch.linspace(-37.0, -3.0, 61, dtype=D64), torch.tensor([-12.0, -8.3, -3.0001, -2.9999, 0.5, 3.0], dtype=D64)]
    )
    W, b, x = torch.ones(1, 1, dtype=D64), torch.zeros(1, dtype=D64), z[:, None]
    g, lv, _ = tr.geometry(W, b, x, A.get("gelu").code, 0, False)
    d1 = A.get("gelu").d1(z)
    torch.testing.assert_close(lv, torch.log(d1.abs()), rtol=0, atol=5e-14)
