"""torch 2.14's nested forward mode of layer_norm, instance_norm and batch-statistics batch_norm is wrong
(an O(1) error in second derivatives under jvp-of-jvp); inside ``ad_guards`` (every fastgeom pass, the
curvature routes and the brute-force oracle) they are routed to plain-op compositions. Reference:
reverse-over-reverse autograd of torch's own function (right), float64, odd sizes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

import fastgeom as fg
from fastgeom import curvature as cv
from fastgeom import surfaces
from fastgeom.engine.guards import ad_guards
from fastgeom.features import FeatureMap

D = torch.float64


def _second(f, x, u, v):
    return jvp(lambda y: jvp(f, (y,), (u,))[1], (x,), (v,))[1]


def _reverse_second(f, x, u, v):
    """d^2 f [u, v] row by row from reverse-over-reverse Hessians of w . f (independent of forward mode)."""
    out = f(x)
    rows = []
    for i in range(out.numel()):
        H = torch.autograd.functional.hessian(lambda y, i=i: f(y).reshape(-1)[i], x)
        rows.append(torch.einsum("a,ab,b->", u.reshape(-1), H.reshape(x.numel(), x.numel()), v.reshape(-1)))
    return torch.stack(rows).reshape(out.shape)


CASES = {
    "layer_norm": (lambda y, w, b: F.layer_norm(y, (5,), w, b), (2, 3, 5), (5,)),
    "layer_norm_2d": (lambda y, w, b: F.layer_norm(y, (3, 5), w.expand(3, 5), b.expand(3, 5)), (2, 3, 5), (5,)),
    "instance_norm": (lambda y, w, b: F.instance_norm(y, weight=w, bias=b), (2, 3, 5), (3,)),
    "batch_norm_batch_stats": (lambda y, w, b: F.batch_norm(y, None, None, w, b, training=True), (3, 3, 5), (3,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nested_forward_mode_of_normalisations_is_right_inside_ad_guards(name):
    fn, shape, pshape = CASES[name]
    g = torch.Generator().manual_seed(len(name))
    x, u, v = (torch.randn(*shape, generator=g, dtype=D) for _ in range(3))
    w, b = torch.rand(*pshape, generator=g, dtype=D) + 0.5, torch.randn(*pshape, generator=g, dtype=D)
    f = lambda y: fn(y, w, b)  # noqa: E731
    ref = _reverse_second(f, x, u, v)
    with ad_guards():
        got = _second(f, x, u, v)
        first = jvp(f, (x,), (u,))
        torch.testing.assert_close(f(x), fn(x, w, b), rtol=1e-13, atol=1e-13)  # values unchanged
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(first[1], jvp(f, (x,), (u,))[1], rtol=1e-13, atol=1e-13)
    if name != "layer_norm_2d":
        assert (_second(f, x, u, v) - ref).abs().max() > 1e-3  # torch alone is wrong here: the route matters


def _ln_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 9), nn.LayerNorm(9), nn.Tanh(), nn.Linear(9, 7), nn.LayerNorm(7)).to(D)


def test_scalar_curvature_of_a_layernorm_mlp_agrees_on_every_route():
    """The nested-JVP route (jet=False), the jet route and the brute-force oracle agree on a LayerNorm MLP."""
    m = _ln_mlp()
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    fmap = FeatureMap(m)
    with ad_guards():
        jet = surfaces.scalar_curvature_fmap(fmap, x, 7)  # jet=None: the validated jet pass
        nested = surfaces.scalar_curvature_fmap(fmap, x, 7, jet=False)
    assert surfaces.jet_graph(fmap, x, 7) is not None  # the comparison is between two routes
    torch.testing.assert_close(fg.scalar_curvature(m, x, progress=False), jet, rtol=1e-9, atol=1e-9)

    def metric(y):
        J = torch.func.jacfwd(lambda z: fmap(z[None])[0])(y)
        return J.T @ J

    oracle = cv.ricci_scalar(metric, x)
    torch.testing.assert_close(nested, jet, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(oracle, jet, rtol=1e-8, atol=1e-8)
