"""path_length and geodesic (fastgeom.paths) against exact references: |W dx| on a linear map, meridian
arcs and great-circle distances on the inverse stereographic projection R^2 -> S^2, exact piecewise
lengths of a ReLU network; invariances, errors, float32."""

import math

import pytest
import torch
from torch import nn

import fastgeom as fg
from fastgeom.api import PrecisionWarning

D64 = torch.float64


def stereo(p):
    s = (p**2).sum(1, keepdim=True)
    return torch.cat([2 * p, s - 1], 1) / (s + 1)


def test_linear_map_is_W_dx():
    W = torch.randn(7, 5, dtype=D64)
    path = torch.randn(6, 5, dtype=D64)
    L = fg.path_length(None, path, layer=lambda x: x @ W.T, per_segment=True)
    ref = torch.linalg.vector_norm((path[1:] - path[:-1]) @ W.T, dim=1)
    torch.testing.assert_close(L, ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(fg.path_length(None, path, layer=lambda x: x @ W.T), ref.sum(), rtol=1e-13, atol=0)


def test_meridian_arc_on_the_sphere():
    """A ray through 0 maps to a meridian: the arc from radius a to b has length 2 (atan b - atan a)."""
    d = torch.tensor([0.6, -0.8], dtype=D64)
    a, b, c = 0.05, 1.3, 7.0
    path = torch.stack([a * d, b * d, c * d])
    L = fg.path_length(None, path, layer=stereo, per_segment=True)
    ref = torch.tensor([2 * (math.atan(b) - math.atan(a)), 2 * (math.atan(c) - math.atan(b))], dtype=D64)
    torch.testing.assert_close(L, ref, rtol=1e-10, atol=0)


def relu_length_exact(W1, b1, W2, path):
    """Exact length of a polyline through a one-hidden-layer ReLU net: on each linear piece of each
    segment (cut where a pre-activation changes sign) the integrand |J dx| is constant."""
    total = []
    W1, b1, W2 = W1.detach(), b1.detach(), W2.detach()
    for p, q in zip(path[:-1], path[1:]):
        dz = (q - p) @ W1.T
        z0 = p @ W1.T + b1
        t = (-z0 / dz)[(dz != 0)]
        cuts = torch.cat([torch.tensor([0.0, 1.0], dtype=D64), t[(t > 0) & (t < 1)]]).sort().values
        seg = 0.0
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            mid = p + (lo + hi) / 2 * (q - p)
            act = ((mid @ W1.T + b1) > 0).to(D64)
            seg += float((hi - lo) * torch.linalg.vector_norm(W2 @ (act * dz)))
        total.append(seg)
    return torch.tensor(total, dtype=D64)


def test_relu_network_exact_pieces():
    net = nn.Sequential(nn.Linear(5, 13), nn.ReLU(), nn.Linear(13, 4)).double()
    path = torch.randn(5, 5, dtype=D64)
    L = fg.path_length(net, path, per_segment=True)
    ref = relu_length_exact(net[0].weight, net[0].bias, net[2].weight, path)
    torch.testing.assert_close(L, ref, rtol=1e-8, atol=0)


def test_rotation_of_features_and_zero_segments_and_bad_input():
    net = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 6)).double()
    path = torch.randn(4, 3, dtype=D64)
    path[2] = path[1]  # a zero-length segment
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=D64))
    L = fg.path_length(net, path, per_segment=True)
    assert L[1] == 0
    torch.testing.assert_close(
        fg.path_length(None, path, layer=lambda x: net(x) @ Q, per_segment=True), L, rtol=1e-10, atol=0
    )
    with pytest.raises(ValueError, match="at least 2 points"):
        fg.path_length(net, path[:1])
    with pytest.raises(ValueError, match="rtol"):
        fg.path_length(net, path, rtol=0.0)


def test_float32_network_warns_and_agrees():
    net = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 6))
    path = torch.randn(4, 3)
    with pytest.warns(PrecisionWarning, match="float32"):
        L32 = fg.path_length(net, path)
    L64 = fg.path_length(net, path, dtype=D64)
    assert L32.dtype == D64
    torch.testing.assert_close(L32, L64, rtol=1e-5, atol=0)


def test_geodesic_is_the_great_circle():
    p, q = torch.tensor([0.3, -0.8], dtype=D64), torch.tensor([-1.2, 0.9], dtype=D64)
    gc = math.acos(float(stereo(p[None])[0] @ stereo(q[None])[0]))
    r = fg.geodesic(None, p, q, layer=stereo, n=32)
    assert r.path.shape == (33, 2) and r.converged and r.iterations > 0
    assert torch.equal(r.path[0], p) and torch.equal(r.path[-1], q)
    assert float(r.length) >= gc * (1 - 1e-9)  # no path is shorter than the geodesic distance
    assert float(r.length) / gc - 1 < 1e-3  # O(1/n^2) discretisation
    straight = fg.path_length(None, torch.stack([p, q]), layer=stereo)
    assert float(straight) > 1.05 * gc  # the straight path is clearly longer: the test can fail
    assert r.energy < r.straight_energy
    # the image points lie on the great circle through phi(p), phi(q): normal to their cross product
    nrm = torch.linalg.cross(stereo(p[None])[0], stereo(q[None])[0])
    assert (stereo(r.path) @ nrm).abs().max() < 1e-4


def test_geodesic_of_a_submersion_and_errors():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x0, x1 = torch.randn(4, dtype=D64), torch.randn(4, dtype=D64)
    r = fg.geodesic(net, x0, x1, n=9)
    assert r.path.shape == (10, 4) and r.energy <= r.straight_energy * (1 + 1e-12)
    # its length is at least the straight feature-space distance of the endpoints
    assert float(r.length) >= float(torch.linalg.vector_norm(net(x1) - net(x0))) * (1 - 1e-9)
    with pytest.raises(ValueError, match="same shape"):
        fg.geodesic(net, x0, x1[:3])
    with pytest.raises(ValueError, match="n must be"):
        fg.geodesic(net, x0, x1, n=0)
