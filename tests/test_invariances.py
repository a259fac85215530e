"""Hypothesis property tests of three invariances of the log volume element (MATH.md section 2)."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgeom as fg

D = torch.float64
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def random_features(seed: int, d_in: int, d_out: int, hidden: int = 7):
    """A smooth random feature map R^d_in -> R^d_out (tanh MLP with fixed weights) and 3 points."""
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(hidden, d_in, generator=g, dtype=D) / math.sqrt(d_in)
    b1 = torch.randn(hidden, generator=g, dtype=D)
    W2 = torch.randn(d_out, hidden, generator=g, dtype=D) / math.sqrt(hidden)
    x = torch.randn(3, d_in, generator=g, dtype=D)
    return (lambda z: torch.tanh(z @ W1.T + b1) @ W2.T), x, g


dims = st.integers(1, 6)
methods = st.sampled_from(["dense", "streamed"])


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d_in=dims, d_out=dims, method=methods)
def test_orthogonal_map_on_features_leaves_logvol_unchanged(seed, d_in, d_out, method):
    phi, x, g = random_features(seed, d_in, d_out)
    Q = torch.linalg.qr(torch.randn(d_out, d_out, generator=g, dtype=D)).Q
    a = fg.logvol(None, x, phi, method=method)
    b = fg.logvol(None, x, lambda z: phi(z) @ Q.T, method=method)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    d_in=dims,
    d_out=dims,
    method=methods,
    c=st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3),
)
def test_scaling_features_by_c_adds_r_log_c(seed, d_in, d_out, method, c):
    phi, x, _ = random_features(seed, d_in, d_out)
    r = min(d_in, d_out)
    a = fg.logvol(None, x, phi, method=method)
    b = fg.logvol(None, x, lambda z: c * phi(z), method=method)
    assert torch.allclose(b, a + r * math.log(abs(c)), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    d_in=st.integers(1, 5),
    extra=st.integers(0, 4),
    method=methods,
    log_scales=st.lists(st.floats(-3, 3), min_size=5, max_size=5),
)
def test_precomposing_immersion_with_invertible_map_adds_log_det(seed, d_in, extra, method, log_scales):
    d_out = d_in + extra  # immersion (d_out >= d_in)
    phi, x, g = random_features(seed, d_in, d_out, hidden=d_out + 2)
    U = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=D)).Q
    V = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=D)).Q
    A = U @ torch.diag(torch.tensor(log_scales[:d_in], dtype=D).exp()) @ V  # invertible, cond <= e^6
    y = x  # points where phi is evaluated (moderate, so tanh does not saturate)
    xa = torch.linalg.solve(A, y.T).T  # A xa = y
    a = fg.logvol(None, y, phi, method=method)  # phi at A xa
    b = fg.logvol(None, xa, lambda z: phi(z @ A.T), method=method)  # (phi o A) at xa
    assert torch.allclose(b, a + torch.linalg.slogdet(A).logabsdet, rtol=1e-10, atol=1e-10)
