"""fastgeom.shallow (torch backend) and fastgeom.activations: API, shapes, errors, derivative table."""

import math

import pytest
import torch

import fastgeom.activations as A
import fastgeom.shallow as sh

D64 = torch.float64


def _net(n, d, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=D64) * scale,
        torch.randn(n, generator=g, dtype=D64),
        torch.randn(7, d, generator=g, dtype=D64),
    )


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "erf", "gelu", "softplus", "sin", "z^1", "z^2", "z^3", "z**4"])
def test_activation_derivatives_match_autograd(name):
    act = A.get(name)
    z = torch.linspace(-3, 3, 41, dtype=D64, requires_grad=True)
    (d1,) = torch.autograd.grad(act.sigma(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    torch.testing.assert_close(act.d1(z).detach(), d1.detach(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(act.d2(z).detach(), d2, rtol=1e-13, atol=1e-13)


def test_erf_is_plain_erf():
    z = torch.linspace(-2, 2, 9, dtype=D64)
    torch.testing.assert_close(A.get("erf")(z), torch.erf(z))


def test_unknown_activation_lists_known():
    with pytest.raises(ValueError, match="sigmoid.*tanh|known"):
        A.get("relu6")


def test_shapes_and_metric_closed_form():
    W, b, x = _net(11, 3)
    g = sh.metric(W, b, x, "tanh")
    assert g.shape == (7, 3, 3) and g.dtype == D64
    J = torch.func.vmap(torch.func.jacrev(lambda p: torch.tanh(W @ p + b) / math.sqrt(11)))(x)
    torch.testing.assert_close(g, J.mT @ J, rtol=1e-13, atol=1e-15)
    lv = sh.log_volume_element(W, b, x, "tanh")
    torch.testing.assert_close(lv, 0.5 * torch.logdet(g), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sh.volume_element(W, b, x, "tanh"), torch.exp(lv))
    R = sh.ricci_scalar(W, b, x, "tanh")
    assert R.shape == (7,)
    torch.testing.assert_close(sh.ricci_scalar(W, b, x, "tanh", convention="paper"), 3 * R)


def test_submersion_pseudo_volume():
    W, b, x = _net(2, 5)
    lv = sh.log_volume_element(W, b, x, "sigmoid")
    s = torch.sigmoid(x @ W.T + b)
    J = (s * (1 - s))[:, :, None] * W / math.sqrt(2)
    torch.testing.assert_close(lv, 0.5 * torch.logdet(J @ J.mT), rtol=1e-12, atol=1e-12)
    assert torch.isnan(sh.ricci_scalar(W, b, x, "sigmoid")).all()


def test_one_dimensional_input_is_flat():
    W, b, x = _net(9, 1)
    assert sh.ricci_scalar(W, b, x, "erf").abs().max() < 1e-12


def test_bad_inputs_raise_clear_errors():
    W, b, x = _net(5, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        sh.metric(W, b, torch.zeros(3, 3, dtype=D64), "tanh")
    with pytest.raises(ValueError, match="b must have shape"):
        sh.metric(W, b[:3], x, "tanh")
    with pytest.raises(ValueError, match="NaN"):
        sh.metric(W, b, x * float("nan"), "tanh")
    with pytest.raises(ValueError, match="backend"):
        sh.metric(W, b, x, "tanh", backend="fortran")
    with pytest.raises(ValueError, match="convention"):
        sh.ricci_scalar(W, b, x, "tanh", convention="wrong")
    with pytest.raises(ValueError, match="d = 2"):
        sh.ricci_scalar_2d(*_net(5, 3), "tanh")
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        sh.ricci_scalar_3units(W, b, x, "tanh")


def test_explicit_unusable_backend_raises_runtime_error(monkeypatch):
    import fastgeom._ext as E

    monkeypatch.setattr(E.ext, "module", None)
    monkeypatch.setattr(E.ext, "error", "not built (test)")
    W, b, x = _net(5, 2)
    with pytest.raises(RuntimeError, match="pip install"):
        sh.ricci_scalar(W, b, x, "tanh", backend="cpp")


def test_saturated_derivatives_keep_relative_accuracy():
    z = torch.tensor([-40.0, 40.0], dtype=D64)
    torch.testing.assert_close(
        A.get("sigmoid").d1(z), torch.exp(-z.abs()) / (1 + torch.exp(-z.abs())) ** 2, rtol=1e-14, atol=0
    )
    torch.testing.assert_close(
        A.get("tanh").d1(z), 4 * torch.exp(-2 * z.abs()) / (1 + torch.exp(-2 * z.abs())) ** 2, rtol=1e-14, atol=0
    )


def test_complex_inputs_and_integer_dtype_raise():
    W, b, x = _net(5, 2)
    with pytest.raises(TypeError, match="x is complex"):
        sh.log_volume_element(W, b, x.to(torch.complex128), "tanh")
    with pytest.raises(TypeError, match="W is complex"):
        sh.metric(W.to(torch.complex128), b, x, "tanh")
    for fn in (sh.metric, sh.log_volume_element, sh.volume_element, sh.ricci_scalar, sh.geometry):
        with pytest.raises(TypeError, match="floating dtype"):
            fn(W, b, x, "tanh", dtype=torch.int64)
    assert sh.log_volume_element(W, b, x, "tanh", dtype=torch.float32).dtype == torch.float32
