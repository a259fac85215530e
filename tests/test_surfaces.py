"""Gauss-equation curvature (fastgeom.surfaces) against independent references, float64 at odd sizes:
the brute-force oracle (fastgeom.curvature, metric derivatives by autograd), the shallow closed forms,
the round sphere; invariances, errors, float32 vs float64."""

import pytest
import torch
from curvature_refs import oracle_K, oracle_R, small_cnn
from torch import nn

import fastgeom as fg
from fastgeom import shallow as sh
from fastgeom import surfaces
from fastgeom.api import RankDeficiencyWarning
from fastgeom.features import FeatureMap

D64 = torch.float64
RHO = 1.7


def stereo(p, r=RHO):
    """Inverse stereographic projection R^2 -> sphere of radius r in R^3 (round metric pulled back)."""
    s = (p**2).sum(1, keepdim=True)
    return r * torch.cat([2 * p, s - 1], 1) / (s + 1)


def stereo_m(p, r=RHO):
    """Inverse stereographic projection R^m -> the m-sphere of radius r in R^{m+1}."""
    s = (p**2).sum(1, keepdim=True)
    return r * torch.cat([2 * p, s - 1], 1) / (s + 1)


def mlp(d_in=3):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d_in, 9), nn.Tanh(), nn.Linear(9, 11), nn.Softplus(), nn.Linear(11, 5)).double()


def test_round_sphere():
    x = torch.randn(5, 2, dtype=D64) * 1.3
    u, v = torch.tensor([1.0, 0.2], dtype=D64), torch.tensor([-0.4, 0.9], dtype=D64)
    K = fg.gaussian_curvature(None, x, u, v, layer=stereo)
    torch.testing.assert_close(K, torch.full((5,), 1 / RHO**2, dtype=D64), rtol=1e-12, atol=0)
    R = fg.scalar_curvature(None, x, layer=stereo)
    torch.testing.assert_close(R, torch.full((5,), 2 / RHO**2, dtype=D64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("m", [3, 5])
def test_round_m_sphere(m):
    x = torch.randn(3, m, dtype=D64)
    R = fg.scalar_curvature(None, x, layer=stereo_m)
    torch.testing.assert_close(R, torch.full((3,), m * (m - 1) / RHO**2, dtype=D64), rtol=1e-11, atol=0)


@pytest.mark.parametrize("d,n,act", [(2, 7, "sigmoid"), (3, 11, "tanh"), (5, 9, "erf"), (4, 4, "sigmoid")])
def test_shallow_closed_forms(d, n, act):
    W, b = torch.randn(n, d, dtype=D64), torch.randn(n, dtype=D64)
    x = torch.randn(5, d, dtype=D64) * 0.7
    from fastgeom import activations

    s = activations.get(act)
    R = fg.scalar_curvature(None, x, layer=lambda z: s(z @ W.T + b) / n**0.5)
    ref = sh.ricci_scalar(W, b, x, act, backend="torch")  # n = d: flat (R = 0)
    torch.testing.assert_close(R, ref, rtol=1e-9, atol=1e-9 * max(float(ref.abs().max()), 1.0))


@pytest.mark.parametrize("layer", ["1", "3", None])
def test_deep_mlp_vs_oracle(layer):
    net = mlp()
    x = torch.randn(5, 3, dtype=D64)
    R = fg.scalar_curvature(net, x, layer)
    ref = oracle_R(FeatureMap(net, layer), x)
    torch.testing.assert_close(R, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_two_d_inputs_R_is_2K():
    net = mlp(2)
    x = torch.randn(7, 2, dtype=D64)
    K = fg.gaussian_curvature(net, x, torch.tensor([1.0, 0.0], dtype=D64), torch.tensor([0.3, 1.0], dtype=D64), "3")
    R = fg.scalar_curvature(net, x, "3")
    torch.testing.assert_close(R, 2 * K, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", ["2", None])
def test_cnn_plane_vs_oracle(layer):
    """2-D slices of a small CNN (BatchNorm in eval, a submersion at the output: 42 inputs -> 3 features)."""
    net = small_cnn()
    x = torch.randn(3, 1, 6, 7, dtype=D64)
    u, v = torch.randn(3, 1, 6, 7, dtype=D64), torch.randn(3, 1, 6, 7, dtype=D64)
    net.train()
    with pytest.warns(fg.geometry.EvalModeWarning):
        K = fg.gaussian_curvature(net, x, u, v, layer)
    assert net.training  # restored
    net.eval()
    ref = oracle_K(FeatureMap(net, layer), x, u, v)
    torch.testing.assert_close(K, ref, rtol=1e-8, atol=1e-8 * float(ref.abs().max()))


def test_basis_change_and_feature_rotation():
    net = small_cnn().eval()
    x = torch.randn(5, 1, 6, 7, dtype=D64)
    u, v = torch.randn(1, 6, 7, dtype=D64), torch.randn(1, 6, 7, dtype=D64)
    K, g = fg.gaussian_curvature(net, x, u, v, "4", return_metric=True)
    K2 = fg.gaussian_curvature(net, x, 2.0 * u - 0.7 * v, 0.3 * u + 1.1 * v, "4")
    torch.testing.assert_close(K2, K, rtol=1e-9, atol=1e-12)
    fmap = FeatureMap(net, "4")
    Qr, _ = torch.linalg.qr(torch.randn(12, 12, dtype=D64))
    K3 = fg.gaussian_curvature(None, x, u, v, layer=lambda z: fmap(z) @ Qr)
    torch.testing.assert_close(K3, K, rtol=1e-9, atol=1e-12)
    # the plane's metric is that of the Jacobian restricted to span(u, v)
    J = fg.jacobian(net, x, "4")
    T = J @ torch.stack([u.reshape(-1), v.reshape(-1)], 1)
    torch.testing.assert_close(g, T.mT @ T, rtol=1e-12, atol=1e-14)


def test_per_point_directions_and_chunks_and_empty():
    net = mlp()
    x = torch.randn(5, 3, dtype=D64)
    U, V = torch.randn(5, 3, dtype=D64), torch.randn(5, 3, dtype=D64)
    K = fg.gaussian_curvature(net, x, U, V, "1")
    Ki = torch.stack([fg.gaussian_curvature(net, x[i : i + 1], U[i], V[i], "1")[0] for i in range(5)])
    torch.testing.assert_close(K, Ki, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        fg.gaussian_curvature(net, x, U, V, "1", chunk_size=1, budget=1), K, rtol=1e-12, atol=1e-14
    )
    R = fg.scalar_curvature(net, x, "1")
    torch.testing.assert_close(fg.scalar_curvature(net, x, "1", chunk_size=2, budget=1), R, rtol=1e-12, atol=1e-13)
    assert fg.gaussian_curvature(net, x[:0], U[0], V[0]).shape == (0,)
    assert fg.scalar_curvature(net, x[:0]).shape == (0,)


def test_oom_halves_the_pass(monkeypatch):
    net = mlp()
    x = torch.randn(5, 3, dtype=D64)
    ref = fg.scalar_curvature(net, x, "3")
    calls = []

    def fault(stage):
        calls.append(stage)
        if len(calls) <= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(surfaces, "fault_injector", fault)
    torch.testing.assert_close(fg.scalar_curvature(net, x, "3"), ref, rtol=1e-12, atol=1e-13)
    assert len(calls) > 2


def test_rank_deficient_points_are_nan_and_named():
    f = lambda p: torch.stack([p[:, 0], p[:, 1] ** 3, p[:, 0] ** 2], 1)  # noqa: E731 - rank 1 where x1 = 0
    x = torch.randn(5, 2, dtype=D64)
    x[3, 1] = 0.0
    with pytest.warns(RankDeficiencyWarning, match=r"rank below 2.*: 3"):
        K = fg.gaussian_curvature(
            None, x, torch.tensor([1.0, 0.0], dtype=D64), torch.tensor([0.0, 1.0], dtype=D64), layer=f
        )
    assert torch.isnan(K[3]) and torch.isfinite(K[[0, 1, 2, 4]]).all()
    with pytest.warns(RankDeficiencyWarning, match=r": 3"):
        R = fg.scalar_curvature(None, x, layer=f)
    assert torch.isnan(R[3]) and torch.isfinite(R[[0, 1, 2, 4]]).all()


def test_bad_inputs():
    net = mlp()
    x = torch.randn(4, 3, dtype=D64)
    u = torch.randn(3, dtype=D64)
    with pytest.raises(ValueError, match="parallel"):
        fg.gaussian_curvature(net, x, u, -2.5 * u)
    with pytest.raises(ValueError, match="parallel"):
        fg.gaussian_curvature(net, x, u, torch.zeros(3, dtype=D64))
    with pytest.raises(ValueError, match=r"v has shape \(2,\)"):
        fg.gaussian_curvature(net, x, u, torch.randn(2, dtype=D64))
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        fg.gaussian_curvature(net, x, [1.0, 0, 0], u)
    with pytest.raises(ValueError, match="d_out = 1"):
        fg.gaussian_curvature(None, x, u, torch.randn(3, dtype=D64), layer=lambda z: z.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="immersion.*degenerate.*gaussian_curvature"):
        fg.scalar_curvature(nn.Linear(6, 4).double(), torch.randn(3, 6, dtype=D64))
    with pytest.raises(ValueError, match="chunk_size"):
        fg.scalar_curvature(net, x, chunk_size=0)
    with pytest.raises(ValueError, match="batch dimension"):
        fg.scalar_curvature(net, torch.randn(3, dtype=D64))


def test_float32_network_close_to_float64():
    net = mlp().float()
    x = torch.randn(5, 3)
    u, v = torch.randn(3), torch.randn(3)
    K32 = fg.gaussian_curvature(net, x, u, v, "3")
    K64 = fg.gaussian_curvature(net, x, u, v, "3", dtype=D64)
    assert K32.dtype == D64
    torch.testing.assert_close(K32, K64, rtol=1e-3, atol=1e-4 * float(K64.abs().max()))
    R32, R64 = fg.scalar_curvature(net, x, "3"), fg.scalar_curvature(net, x, "3", dtype=D64)
    torch.testing.assert_close(R32, R64, rtol=1e-3, atol=1e-4 * float(R64.abs().max()))


def test_geometry_handle_methods_equal_the_functional_forms():
    net = mlp()
    x = torch.randn(5, 3, dtype=D64)
    u, v = torch.randn(3, dtype=D64), torch.randn(3, dtype=D64)
    g = fg.Geometry(net, "3")
    torch.testing.assert_close(g.scalar_curvature(x), fg.scalar_curvature(net, x, "3"), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(
        g.gaussian_curvature(x, u, v), fg.gaussian_curvature(net, x, u, v, "3"), rtol=1e-13, atol=1e-13
    )
    torch.testing.assert_close(g.path_length(x), fg.path_length(net, x, "3"), rtol=1e-13, atol=0)
    r = g.geodesic(x[0], x[1], n=5)
    torch.testing.assert_close(r.path, fg.geodesic(net, x[0], x[1], "3", n=5).path, rtol=1e-12, atol=1e-12)
