"""The jet (second-order forward) route of fastgeom.surfaces against the nested-JVP route and the brute-force
oracle, float64 at odd sizes; its first-point check; the fallback and strict policy; the handle's cache."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from curvature_refs import oracle_K, oracle_R, small_cnn
from torch import nn
from torch.func import jacrev, jvp

import fastgeom as fg
from fastgeom import geometry, surfaces
from fastgeom.engine import jet_net
from fastgeom.engine.choice import EngineWarning
from fastgeom.engine.linear_net import LinearizeError
from fastgeom.features import FeatureMap

D64 = torch.float64


@pytest.fixture(autouse=True)
def _jet_from_the_first_point(monkeypatch):
    """Handles (and so the functional API) build the jet from their first call here, so that every
    comparison below runs the jet route (in use, a handle builds it after JET_MIN_POINTS points)."""
    monkeypatch.setattr(geometry, "JET_MIN_POINTS", 1)


def mlp(d, acts, widths, seed=0):
    torch.manual_seed(seed)
    layers, w_in = [], d
    for act, w in zip(acts, widths):
        layers += [nn.Linear(w_in, w), act]
        w_in = w
    layers.append(nn.Linear(w_in, 2 * d + 3))
    return nn.Sequential(*layers).double().eval()


class Gated(nn.Module):
    """Products of two x-dependent tensors, a residual sum, a constant factor, concatenation, LayerNorm,
    SiLU/ELU (derivatives by autograd), ReLU and an unfolded BatchNorm1d: every kind of jet rule."""

    def __init__(self, d=5):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(d, 7), nn.Linear(d, 7)
        self.ln = nn.LayerNorm(14)
        self.bn = nn.BatchNorm1d(14)
        self.out = nn.Linear(14, 13)
        self.bn.running_mean.uniform_(-0.2, 0.2)
        self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        h = torch.tanh(self.a(x)) * torch.sigmoid(self.b(x))  # product rule
        g = F.silu(self.b(x)) + 0.5 * h  # residual add, constant factor
        z = torch.cat([g, F.elu(h) - h * h], dim=1)  # generic node (cat), sub, square
        z = self.bn(F.softplus(self.ln(z)))  # LayerNorm by torch.func, BN as a scale
        return self.out(z) + 0.1 * torch.relu(self.out(z))


class Untraceable(nn.Module):
    """Control flow on a size: torch.fx cannot trace it (the jet falls back to nested JVPs)."""

    def __init__(self, d=3):
        super().__init__()
        torch.manual_seed(4)
        self.l1, self.l2 = nn.Linear(d, 9), nn.Linear(9, 7)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        if h.shape[-1] == 9:  # fx: a Proxy in a condition
            h = F.gelu(h)
        return self.l2(h)


def nested_pairs(fmap, x, E, ia, ib):
    """(J (k, P, n), H (m, P, n)) by a JVP of a JVP on fmap, one pair at a time."""
    J = torch.stack([jvp(fmap, (x,), (e,))[1] for e in E])
    H = []
    for a, b in zip(ia.tolist(), ib.tolist()):
        inner = lambda y, a=a: jvp(fmap, (y,), (E[a],))[1]  # noqa: E731
        H.append(jvp(inner, (x,), (E[b],))[1])
    return J, torch.stack(H)


def reverse_pairs(fmap, x, E, ia, ib):
    """H (m, P, n) from each point's Hessian by reverse-over-reverse autograd (jacrev of jacrev)."""
    out = []
    for p in range(x.shape[0]):
        Hp = jacrev(jacrev(lambda z: fmap(z[None])[0]))(x[p]).reshape(-1, x[p].numel(), x[p].numel())
        Ep = E[:, p].reshape(E.shape[0], -1)
        out.append(torch.einsum("nij,mi,mj->mn", Hp, Ep[ia], Ep[ib]))
    return torch.stack(out, 1)


def gauss_R_reverse(fmap, x):
    """Ricci scalar by Gauss's equation from reverse-mode J and Hessian, per point (no forward-mode AD)."""
    out = []
    for xi in x:
        f = lambda z: fmap(z[None])[0]  # noqa: E731
        J, H = jacrev(f)(xi), jacrev(jacrev(f))(xi)
        Q, R = torch.linalg.qr(J)
        N = H - torch.einsum("nk,mk,mab->nab", Q, Q, H)
        Ri = torch.linalg.inv(R)
        Nt = torch.einsum("ai,bj,nab->ijn", Ri, Ri, N)
        out.append((Nt.diagonal(dim1=0, dim2=1).sum(-1) ** 2).sum() - (Nt**2).sum())
    return torch.stack(out)


def check_pass(fmap, x, k=3, nested=True):
    """The jet's phi, J and H along random directions and pairs (incl. a repeated and a reversed one) at x,
    against reverse-over-reverse Hessians and (``nested``) a JVP of a JVP."""
    P = x.shape[0]
    E = torch.randn(k, *x.shape, dtype=D64)
    ia, ib = torch.tensor([0, 1, 2, 0, 2, 1]), torch.tensor([0, 1, 2, 1, 0, 1])
    jg = jet_net.validated_jet(fmap, x, fmap(x[:1]).shape[1])
    phi, J, H = jg.jet(x, E, ia, ib)
    Jr, Hr = nested_pairs(fmap, x, E, ia, ib)
    torch.testing.assert_close(phi, fmap(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(J, Jr, rtol=1e-11, atol=1e-11 * float(Jr.abs().max()))
    Hrev = reverse_pairs(fmap, x, E, ia, ib)
    torch.testing.assert_close(H, Hrev, rtol=1e-10, atol=1e-11 * float(Hrev.abs().max()))
    if nested:
        torch.testing.assert_close(H, Hr, rtol=1e-10, atol=1e-11 * float(Hr.abs().max()))
    assert J.shape == (k, P, phi.shape[1]) and H.shape == (6, P, phi.shape[1])


@pytest.mark.parametrize(
    "model,layer,x_shape",
    [
        (lambda: mlp(5, [nn.Tanh(), nn.Tanh()], [9, 13]), None, (4, 5)),
        (lambda: mlp(3, [nn.GELU(), nn.Softplus(beta=1.5)], [11, 7]), "2", (5, 3)),
        (lambda: mlp(4, [nn.Sigmoid(), nn.GELU(approximate="tanh"), nn.ReLU()], [9, 9, 11]), "3", (3, 4)),
        (lambda: Gated().double().eval(), None, (3, 5)),
    ],
)
def test_jet_pass_equals_nested_jvps(model, layer, x_shape):
    net = model()
    # Gated has a LayerNorm: torch's nested JVPs of layer_norm are wrong (see test_layer_norm_...)
    check_pass(FeatureMap(net, layer), torch.randn(*x_shape, dtype=D64), nested=not isinstance(net, Gated))


class Normed(nn.Module):
    """nn.LayerNorm (affine) and F.layer_norm with a weight over two dims, between tanh layers."""

    def __init__(self, d=4):
        super().__init__()
        torch.manual_seed(6)
        self.l1, self.ln, self.l2 = nn.Linear(d, 12), nn.LayerNorm(12), nn.Linear(12, 15)
        self.ln.weight.data.uniform_(0.5, 1.5)
        self.ln.bias.data.uniform_(-0.5, 0.5)
        self.w = nn.Parameter(torch.rand(3, 5) + 0.5)
        self.l3 = nn.Linear(15, 11)

    def forward(self, x):
        h = self.ln(torch.tanh(self.l1(x)))
        h = F.layer_norm(F.gelu(self.l2(h)).reshape(-1, 3, 5), (3, 5), self.w, None, 1e-3)
        return self.l3(torch.tanh(h.flatten(1)))


def test_layer_norm_jet_against_reverse_mode():
    """The LayerNorm jet rule against reverse-over-reverse autograd. torch.func's nested JVP of layer_norm
    is not (torch 2.14: O(1) off), so the nested-JVP route and the jacfwd oracle are not references here."""
    net = Normed().double().eval()
    fmap = FeatureMap(net)
    x = torch.randn(5, 4, dtype=D64)
    check_pass(fmap, x, nested=False)
    R = surfaces.scalar_curvature_fmap(fmap, x, 11)
    ref = gauss_R_reverse(fmap, x)
    torch.testing.assert_close(R, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_jet_pass_generic_post_and_cnn():
    """The feature map's pool and sphere normalisation (torch.func at the output), convolutions, pooling."""
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.AvgPool2d(1)
    ).double()
    net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(3, 1, 5, 5, dtype=D64)
    check_pass(FeatureMap(net, pool=(1, 1)), x)
    check_pass(FeatureMap(net, target="sphere"), x)


@pytest.mark.parametrize(
    "acts,widths,layer",
    [
        ([nn.Tanh(), nn.Tanh()], [9, 13], None),
        ([nn.GELU(), nn.GELU()], [7, 11], "2"),  # an inner layer (GELU output)
        ([nn.Softplus(), nn.Sigmoid()], [13, 9], "3"),
    ],
)
def test_scalar_curvature_jet_vs_nested_vs_oracle(acts, widths, layer):
    d = 5
    net = mlp(d, acts, widths)
    fmap = FeatureMap(net, layer)
    x = torch.randn(7, d, dtype=D64)
    d_out = fmap(x[:1]).shape[1]
    assert surfaces.jet_graph(fmap, x, d_out) is not None  # the jet route is taken
    R_jet = surfaces.scalar_curvature_fmap(fmap, x, d_out)
    R_nested = surfaces.scalar_curvature_fmap(fmap, x, d_out, jet=False)
    ref = oracle_R(fmap, x)
    torch.testing.assert_close(R_jet, R_nested, rtol=1e-11, atol=1e-11 * float(ref.abs().max()))
    torch.testing.assert_close(R_jet, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    torch.testing.assert_close(fg.scalar_curvature(net, x, layer), R_jet, rtol=1e-13, atol=1e-13)
    # chunked passes (2 pairs per pass, one point per batch) give the same values
    R_chunk = surfaces.scalar_curvature_fmap(fmap, x, d_out, chunk_size=2, budget=1)
    torch.testing.assert_close(R_chunk, R_jet, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


def test_scalar_curvature_jet_on_gated_model():
    net = Gated().double().eval()
    fmap = FeatureMap(net)
    x = torch.randn(5, 5, dtype=D64)
    assert surfaces.jet_graph(fmap, x, 13) is not None
    R_jet = surfaces.scalar_curvature_fmap(fmap, x, 13)
    ref = gauss_R_reverse(fmap, x)  # reverse mode only: the model has a LayerNorm
    torch.testing.assert_close(R_jet, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


@pytest.mark.parametrize("layer", ["2", "4", None])
def test_cnn_plane_jet_vs_nested_vs_oracle(layer):
    net = small_cnn().eval()
    fmap = FeatureMap(net, layer)
    x = torch.randn(3, 1, 6, 7, dtype=D64)
    u, v = torch.randn(3, 1, 6, 7, dtype=D64), torch.randn(3, 1, 6, 7, dtype=D64)
    assert surfaces.jet_graph(fmap, x, fmap(x[:1]).shape[1]) is not None
    K_jet, g_jet = surfaces.gaussian_curvature_fmap(fmap, x, u, v, return_metric=True)
    K_nested, g_nested = surfaces.gaussian_curvature_fmap(fmap, x, u, v, return_metric=True, jet=False)
    ref = oracle_K(fmap, x, u, v)
    torch.testing.assert_close(K_jet, K_nested, rtol=1e-11, atol=1e-11 * float(ref.abs().max()))
    torch.testing.assert_close(g_jet, g_nested, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(K_jet, ref, rtol=1e-8, atol=1e-8 * float(ref.abs().max()))


def test_untraceable_model_falls_back_quietly():
    net = Untraceable().double().eval()
    fmap = FeatureMap(net)
    x = torch.randn(4, 3, dtype=D64)
    with pytest.raises(LinearizeError):
        jet_net.validated_jet(fmap, x, 7)
    assert surfaces.jet_graph(fmap, x, 7) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LinearizeError is the expected failure: no warning
        R = fg.scalar_curvature(net, x)
        g = fg.Geometry(net)
        R2 = g.scalar_curvature(x)
    assert g._jets[g._key(x)] is False
    ref = oracle_R(fmap, x)
    torch.testing.assert_close(R, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    torch.testing.assert_close(R2, R, rtol=1e-13, atol=0)


def test_trace_that_misses_a_hook_fails_the_check():
    """A forward hook changes the model's output; torch.fx does not see it, so the first-point check refuses
    the trace (LinearizeError) and the nested-JVP route measures the hooked model."""
    net = mlp(3, [nn.Tanh()], [9])
    net[1].register_forward_hook(lambda m, i, o: o * (1 + 0.1 * o))
    fmap = FeatureMap(net)
    x = torch.randn(4, 3, dtype=D64)
    with pytest.raises(LinearizeError, match="jet"):
        jet_net.validated_jet(fmap, x, 9)
    R = fg.scalar_curvature(net, x)
    ref = oracle_R(fmap, x)
    torch.testing.assert_close(R, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_check_catches_a_wrong_second_derivative(monkeypatch):
    """A second-derivative rule off by 1e-6 relative fails the float64 check (1e-9)."""
    net = mlp(3, [nn.GELU()], [9])
    fmap = FeatureMap(net)
    x = torch.randn(2, 3, dtype=D64)
    jet_net.validated_jet(fmap, x, 9)
    real = jet_net._act_derivatives

    def off(*a):
        s1, s2 = real(*a)
        return s1, s2 * (1 + 1e-6)

    monkeypatch.setattr(jet_net, "_act_derivatives", off)
    with pytest.raises(LinearizeError, match="H"):
        jet_net.validated_jet(fmap, x, 9)


def test_unexpected_jet_failure_warns_or_raises_under_strict(monkeypatch):
    net = mlp(3, [nn.Tanh()], [9])
    x = torch.randn(3, 3, dtype=D64)
    ref = fg.scalar_curvature(net, x)

    def broken(*a, **k):
        raise RuntimeError("a bug in a jet rule")

    monkeypatch.setattr(jet_net.JetGraph, "_rule", broken)
    with pytest.raises(RuntimeError, match="a bug in a jet rule"):  # tests run with FASTGEOM_STRICT=1
        fg.scalar_curvature(net, x)
    monkeypatch.setenv("FASTGEOM_STRICT", "0")
    with pytest.warns(EngineWarning, match="jet"):
        R = fg.scalar_curvature(net, x)
    torch.testing.assert_close(R, ref, rtol=1e-11, atol=1e-12)


def test_handle_builds_the_jet_once(monkeypatch):
    net = mlp(3, [nn.Tanh(), nn.GELU()], [9, 7])
    x = torch.randn(5, 3, dtype=D64)
    built = []
    real = jet_net.validated_jet
    monkeypatch.setattr(surfaces, "validated_jet", lambda *a: built.append(1) or real(*a))
    g = fg.Geometry(net)
    R1 = g.scalar_curvature(x)
    R2 = g.scalar_curvature(x[1:])
    K = g.gaussian_curvature(x, torch.randn(3, dtype=D64), torch.randn(3, dtype=D64))
    assert len(built) == 1 and torch.isfinite(K).all()
    torch.testing.assert_close(R2, R1[1:], rtol=1e-12, atol=1e-12)
    assert g.held_bytes() > 0
    g.free()
    g.scalar_curvature(x)
    assert len(built) == 2


def test_float32_jet_close_to_float64():
    net = mlp(3, [nn.Tanh(), nn.GELU()], [9, 7]).float()
    x = torch.randn(6, 3)
    fmap = FeatureMap(net)
    assert surfaces.jet_graph(fmap, x, 9) is not None  # float32 check and the float64 copy's check pass
    R32 = fg.scalar_curvature(net, x)
    R64 = fg.scalar_curvature(net, x, dtype=D64)
    torch.testing.assert_close(R32, R64, rtol=1e-3, atol=1e-4 * float(R64.abs().max()))


def test_handle_builds_the_jet_after_min_points(monkeypatch):
    """Small one-off calls skip the jet's trace and check; a handle builds it once it has been asked for
    JET_MIN_POINTS points of one input shape, and both routes give the same values."""
    monkeypatch.setattr(geometry, "JET_MIN_POINTS", 40)
    net = mlp(4, [nn.Tanh(), nn.Softplus()], [11, 13])
    x = torch.randn(16, 4, dtype=D64, generator=torch.Generator().manual_seed(3))
    g = fg.Geometry(net)
    key = g._key(x)
    R1 = g.scalar_curvature(x)
    R2 = g.scalar_curvature(x)
    assert key not in g._jets  # 32 points so far: nested JVPs
    R3 = g.scalar_curvature(x)  # 48 >= 40: the jet is built and kept
    assert g._jets[key] and g.scalar_curvature(x) is not None and len(g._jets) == 1
    torch.testing.assert_close(R3, R1, rtol=1e-11, atol=1e-11 * float(R1.abs().max()))
    torch.testing.assert_close(R2, R1, rtol=0, atol=0)
    g.free()
    assert not g._jets and not g._curv_points
    big = torch.randn(41, 4, dtype=D64, generator=torch.Generator().manual_seed(4))
    fg.Geometry(net).scalar_curvature(big)  # one call over the threshold builds it at once
    h = fg.Geometry(net)
    h.scalar_curvature(big)
    assert h._jets[h._key(big)]
