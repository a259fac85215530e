"""Linear probe (multinomial logistic regression, C = 1) against a direct minimisation of its objective."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from torch import nn

from fastgeom.probe import LinearProbe, extract_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n=90, f=4, k=3, sep=1.5, seed=0):
    g = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = g.normal(size=(k, f)) * sep
    X = centers[y] + g.normal(size=(n, f)) * np.array([1.0, 3.0, 0.5, 2.0])[:f] + 5.0
    return torch.tensor(X), torch.tensor(y)


def _reference_logits(X, y, C, k):
    """argmin over (W, b) of C * sum_n CE(softmax(W z_n + b), y_n) + 0.5 |W|^2, z = standardised X (scipy, float64)."""
    Z = (X - X.mean(0)) / X.std(0)
    n, f = Z.shape
    Y = np.eye(k)[y]

    def obj(theta):
        W, b = theta[: k * f].reshape(k, f), theta[k * f :]
        L = Z @ W.T + b
        P = np.exp(L - logsumexp(L, axis=1, keepdims=True))
        val = C * (logsumexp(L, axis=1) - (L * Y).sum(1)).sum() + 0.5 * (W**2).sum()
        G = C * (P - Y)
        return val, np.concatenate([(G.T @ Z + W).ravel(), G.sum(0)])

    res = minimize(
        obj, np.zeros(k * f + k), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000}
    )
    W, b = res.x[: k * f].reshape(k, f), res.x[k * f :]
    return Z @ W.T + b


@pytest.mark.parametrize("C", [1.0, 0.1])
def test_probe_matches_direct_minimisation(C):
    X, y = _blobs()
    probe = LinearProbe(C=C, tol=1e-10, max_iter=10000).fit(X, y)
    assert probe.converged
    ref = _reference_logits(X.numpy(), y.numpy(), C, 3)
    got = probe.logits(X).numpy()
    # softmax logits are defined up to a per-row constant: compare centred logits
    np.testing.assert_allclose(got - got.mean(1, keepdims=True), ref - ref.mean(1, keepdims=True), atol=2e-4)


def test_probe_linear_is_the_sklearn_model_and_differentiable():
    X, y = _blobs(seed=1, sep=4.0)
    probe = LinearProbe().fit(X, y)
    p = torch.softmax(probe.linear(X), 1).detach().numpy()
    np.testing.assert_allclose(p, probe.sklearn_.predict_proba((X.numpy() - probe.mean_) / probe.scale_), atol=1e-10)
    x = X[:2].clone().requires_grad_(True)
    probe.linear(x).sum().backward()
    assert x.grad is not None and isinstance(probe.linear, nn.Linear)
    assert probe.accuracy(X, y) > 0.8


def test_probe_binary_and_separable():
    X, y = _blobs(n=60, k=2, sep=6.0, seed=2)
    probe = LinearProbe().fit(X, y)
    assert probe.logits(X).shape == (60, 2) and probe.accuracy(X, y) > 0.95
    p = torch.softmax(probe.logits(X), 1)[:, 1].numpy()
    np.testing.assert_allclose(
        p, probe.sklearn_.predict_proba((X.numpy() - probe.mean_) / probe.scale_)[:, 1], atol=1e-10
    )


def test_probe_errors():
    X, y = _blobs()
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearProbe().logits(X)
    with pytest.raises(ValueError, match="rows"):
        LinearProbe().fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        LinearProbe().fit(X[:, :, None], y)
    with pytest.raises(ValueError, match="two classes"):
        LinearProbe().fit(X, torch.zeros_like(y))
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe().fit(Xn, y)
    with pytest.raises(ValueError, match="positive"):
        LinearProbe(C=0)


def test_extract_features_eval_mode_restored():
    from fastgeom.models import cifar_resnet

    bb = cifar_resnet(18, "gelu", None, width=4)
    bb.train()
    x = torch.randn(5, 3, 8, 8)
    f = extract_features(bb, x, batch_size=2)
    assert f.shape == (5, 32) and f.dtype == torch.float64 and bb.training
    bb.eval()
    with torch.no_grad():
        torch.testing.assert_close(f, bb(x).double())
