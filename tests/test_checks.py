"""fastgeom.checks: each probe on a model that triggers it and on one that does not; the feature map's
own guarantees (callable layers cast and detached, x never modified, 0-d features refused)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fastgeom as fg
from fastgeom import checks
from fastgeom.features import FeatureMap

D = torch.float64


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3).to(D)

    def forward(self, x):
        x.sub_(1.0)
        return torch.tanh(self.lin(x))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(3, 3).to(D)

    def forward(self, x):
        return self.l(torch.tanh(self.l(x)))


class Centered(nn.Module):
    def forward(self, x):
        return torch.tanh(x - x.mean(0, keepdim=True))


def test_check_points_devices_and_dtypes():
    x = torch.randn(2, 3, dtype=D)
    checks.check_points(x, device="cpu")
    checks.check_points(x)
    with pytest.raises(ValueError, match=r"x is on the meta device.*model is on cpu"):
        checks.check_points(torch.empty(2, 3, device="meta"), device="cpu")
    with pytest.raises(ValueError, match=r"model is on the meta device.*x is on cpu"):
        checks.check_points(x, device="meta")
    with pytest.raises(ValueError, match=r"x is on cpu but the model is on cuda:1"):
        checks.check_points(x, device="cuda:1")
    with pytest.raises(TypeError, match="layout torch.sparse_coo"):
        checks.check_points(x.to_sparse())
    with pytest.raises(TypeError, match="complex"):
        checks.check_points(x.to(torch.complex128))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        checks.check_points(x.long())
    with pytest.raises(ValueError, match=r"NaN or Inf at point\(s\) 1"):
        checks.check_points(torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="batch dimension"):
        checks.check_points(torch.zeros(3))
    assert checks.model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert checks.model_device(nn.Tanh()) is None and checks.model_device(None) is None


def test_cast_overflow():
    x = torch.tensor([[1.0, 2.0], [1e39, 0.0], [-3e38, 1.0], [0.0, -1e300]], dtype=D)
    assert checks.cast_overflow(x, torch.float32).tolist() == [False, True, False, True]
    h = torch.tensor([[65504.0], [65520.0], [-7e4], [1.0]], dtype=torch.float32)
    assert checks.cast_overflow(h, torch.float16).tolist() == [False, True, True, False]
    assert checks.cast_overflow(h, torch.bfloat16).tolist() == [False] * 4
    assert checks.cast_overflow(x, None).tolist() == [False] * 4 and checks.cast_overflow(x, D).tolist() == [False] * 4


def test_layer_calls():
    x1 = torch.randn(1, 3, dtype=D)
    assert checks.layer_calls(FeatureMap(Twice(), "l"), x1) == 2
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).to(D)
    assert checks.layer_calls(FeatureMap(net, "0"), x1) == 1
    assert checks.layer_calls(FeatureMap(net, None), x1) == 1
    with pytest.warns(checks.LayerCallWarning, match=r"layer 'l' is called 2 times by Twice.forward; .*first call"):
        rep = checks.probe(FeatureMap(Twice(), "l"), x1)
    assert rep.layer_calls == 2 and not rep.mutates_input and not rep.batch_coupled


def test_batch_coupled():
    x = torch.randn(4, 3, 6, 6, dtype=D)
    bn = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)).to(D)
    assert checks.batch_coupled(FeatureMap(bn), x)
    assert checks.batch_coupled(FeatureMap(bn), x[:1])  # one point: compared with a shifted copy
    ok = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)).to(D)  # running stats in eval: per point
    assert not checks.batch_coupled(FeatureMap(ok), x)
    assert not checks.batch_coupled(FeatureMap(ok, dtype=torch.float32), x)
    assert checks.batch_coupled(FeatureMap(Centered()), torch.randn(3, 2, dtype=D))
    with pytest.warns(checks.BatchCouplingWarning, match="depends on the other points of its batch"):
        assert checks.probe(FeatureMap(bn), x).batch_coupled


def test_mutates_input_and_x_is_never_modified():
    x = torch.full((2, 3), 1.54, dtype=D)
    x0 = x.clone()
    assert checks.mutates_input(FeatureMap(InPlace()), x[:1])
    assert not checks.mutates_input(FeatureMap(Twice()), x[:1])
    assert torch.equal(x, x0)
    for method in ("dense", "streamed"):
        lv = fg.logvol(InPlace(), x, method=method)
        assert torch.equal(x, x0) and torch.isfinite(lv).all(), method
    # the value is that of the model applied to (a copy of) x: tanh(W (x - 1) + b)
    m = InPlace()
    lin = m.lin
    want = fg.logvol(None, x, layer=lambda z: torch.tanh(lin(z - 1.0)), method="dense")
    torch.testing.assert_close(fg.logvol(m, x, method="dense"), want, rtol=1e-13, atol=1e-13)
    assert torch.equal(x, x0)


def test_callable_layer_cast_and_detached():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))  # float32, parameters require grad
    x = torch.randn(3, 4, dtype=D)
    feat = lambda z: m[1](m[0](z))  # noqa: E731
    lv = fg.logvol(m, x, layer=feat, dtype=D, method="dense")  # the callable runs on float64 copies
    assert lv.dtype == D and lv.grad_fn is None and not lv.requires_grad
    named = fg.logvol(m, x, layer="1", dtype=D, method="dense")
    torch.testing.assert_close(lv, named, rtol=1e-13, atol=1e-13)
    s = fg.logvol(m, x.float(), layer=feat, method="streamed")
    assert s.grad_fn is None
    torch.testing.assert_close(s, named, rtol=1e-4, atol=1e-4)
    # a callable that is itself a module with parameters (no model): detached and cast too
    lv2 = fg.logvol(None, x, layer=m, dtype=D, method="dense")
    assert lv2.grad_fn is None
    torch.testing.assert_close(lv2, fg.logvol(m, x, dtype=D, method="dense"), rtol=1e-13, atol=1e-13)
    assert all(p.dtype == torch.float32 and p.grad is None for p in m.parameters())  # the model is untouched


@pytest.mark.parametrize(
    "bad,what", [(lambda z: z.sum(), "a 0-d tensor"), (lambda z: z.reshape(-1), "a tensor of shape")]
)
def test_feature_not_per_point(bad, what):
    with pytest.raises(TypeError, match=f"is {what}.*one row per point"):
        fg.logvol(None, torch.randn(3, 2, dtype=D), layer=bad)


def test_probe_quiet_on_a_plain_model():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).to(D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checks.probe(FeatureMap(net, "0"), torch.randn(2, 3, dtype=D)) == checks.ProbeReport(1, False, False)


def test_warn_layer_calls():
    x1 = torch.randn(1, 3, dtype=D)
    with pytest.warns(checks.LayerCallWarning, match=r"called 2 times.*output of the first call"):
        assert checks.warn_layer_calls(FeatureMap(Twice(), "l"), x1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checks.warn_layer_calls(FeatureMap(nn.Sequential(nn.Linear(3, 3)).to(D), "0"), x1) == 1
