"""The linearised engine (engine/linear_net.py) against torch.func on the unmodified model, in float64
at odd sizes: CIFAR ResNets (GELU and ReLU, BatchNorm folded), inner layers, pooling, the sphere
target, generic nodes (max-pool, cat, gating, views, unfolded BatchNorm) and forward mode."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap

import fastgeom as fg
from fastgeom.engine import choice, linear_net
from fastgeom.engine.linear_net import LinearGraph, LinearizeError
from fastgeom.features import FeatureMap
from fastgeom.models import cifar_resnet

D = torch.float64


def _randomise_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g, dtype=D) - 0.5)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g, dtype=D) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g, dtype=D) + 0.5)
                mod.bias.copy_(torch.rand(mod.num_features, generator=g, dtype=D) - 0.5)
    return m


def _resnet(act: str, arch: str = "resnet18", width: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(cifar_resnet(arch, activation=act, num_classes=None, width=width).to(D)).eval()


def _check_against_torch_func(fmap, x, K=5, channels_last=None):
    lin = LinearGraph(fmap, channels_last=channels_last).linearize(x)
    out, pull = vjp(fmap, x)
    torch.testing.assert_close(lin.feature, out, rtol=1e-12, atol=1e-12)
    C = torch.randn(K, *out.shape, dtype=D)
    want = vmap(pull)(C)[0]
    got = lin.vjp(C)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13 * want.abs().max().item())
    T = torch.randn(K, *x.shape, dtype=D)
    want = vmap(lambda t: jvp(fmap, (x,), (t,))[1])(T)
    torch.testing.assert_close(lin.jvp(T), want, rtol=1e-11, atol=1e-13 * want.abs().max().item())
    return lin


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("layer,pool", [(None, None), ("layer2", 12), ("layer3.0", None), ("layer1.1.conv2", None)])
def test_resnet_vjp_jvp_match_torch_func(act, layer, pool):
    m = _resnet(act)
    x = torch.randn(3, 3, 9, 7, dtype=D)
    lin = _check_against_torch_func(FeatureMap(m, layer, pool), x)
    rules = [s.rule for s in lin.steps]
    assert "conv" in rules and "act" in rules and "add" in rules
    assert "scale" not in rules  # every BatchNorm of a ResNet follows its conv: folded


def test_channels_last_and_nchw_agree():
    m = _resnet("gelu")
    x = torch.randn(2, 3, 8, 8, dtype=D)
    for cl in (True, False):
        _check_against_torch_func(FeatureMap(m, "layer2"), x, channels_last=cl)


def test_residual_step_uses_the_fused_op(monkeypatch):
    """The block input feeds the residual branch and the skip: its activation step must receive two
    cotangents (reverse) / a deferred sum (forward) and call dact_add(d, a, b) with both."""
    calls = []
    real = linear_net.dact_add

    def spy(d, a, b=None, **kw):
        calls.append(b is not None)
        return real(d, a, b, **kw)

    monkeypatch.setattr(linear_net, "dact_add", spy)
    m = _resnet("gelu")
    x = torch.randn(2, 3, 8, 8, dtype=D)
    lin = _check_against_torch_func(FeatureMap(m), x, K=2)
    n_act = sum(s.rule == "act" for s in lin.steps)
    assert len(calls) == 2 * n_act  # one call per activation in vjp and in jvp
    # ResNet-18: 8 blocks, each ends act(h + skip) (forward fusion) and its input is shared (reverse fusion)
    assert sum(calls) >= 8


class Odd(nn.Module):
    """Nodes without a hand-written rule (max-pool, cat, gating, views) and a BatchNorm after a
    max-pool, which cannot be folded into a convolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(8, 3, 1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 3 * 2, 5)

    def forward(self, x):
        h = self.bn(self.pool(F.silu(self.conv(x))))
        h = torch.cat([h, torch.tanh(h) * torch.sigmoid(h)], dim=1)  # gating: a product of two carried tensors
        h = F.relu(self.conv2(h)) - 0.5 * h[:, :3]
        h = self.drop(h)
        return self.fc(h.view(h.size(0), -1)) + 1.0


def test_generic_nodes_and_unfolded_batchnorm():
    torch.manual_seed(0)
    m = _randomise_bn(Odd().to(D)).eval()
    x = torch.randn(3, 2, 7, 5, dtype=D)
    lin = _check_against_torch_func(FeatureMap(m), x)
    rules = [s.rule for s in lin.steps]
    assert "func" in rules and "scale" in rules and "sub" in rules and "linear" in rules


def test_logvol_linearized_matches_dense_resnet_pool_sphere_and_dtype():
    m = _resnet("gelu", width=2)
    x = torch.randn(2, 3, 7, 5, dtype=D)
    for kw in ({}, {"layer": "layer3", "pool": 8, "target": "sphere"}, {"layer": "layer2", "chunk_size": 5}):
        ref = fg.logvol(m, x, method="dense", **{k: v for k, v in kw.items() if k != "chunk_size"})
        lv, diag = fg.logvol(m, x, method="linearized", return_diagnostics=True, **kw)
        assert diag.method == "linearized"
        torch.testing.assert_close(lv, ref, rtol=1e-10, atol=1e-10)
    m32 = m.float()
    x32 = x.float()
    try:  # float32 model run in float64 (dtype=): the private copy is cast, the model is not
        ref = fg.logvol(m32, x32, method="dense", dtype=D)
        torch.testing.assert_close(fg.logvol(m32, x32, method="linearized", dtype=D), ref, rtol=1e-10, atol=1e-10)
        assert next(m32.parameters()).dtype == torch.float32
        # float32 throughout: BatchNorm folding changes rounding only
        torch.testing.assert_close(fg.logvol(m32, x32, method="linearized"), fg.logvol(m32, x32, method="dense"),
                                   rtol=1e-4, atol=1e-3)
    finally:
        m.double()


def test_forward_mode_immersion():
    """d_out > d_in: JVP columns through the linear network."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.GELU(), nn.Conv2d(6, 5, 3, padding=1),
                      nn.Tanh(), nn.Flatten()).to(D)
    _randomise_bn(m).eval()
    x = torch.randn(4, 1, 3, 4, dtype=D)
    ref = fg.logvol(m, x, method="dense")
    lv, diag = fg.logvol(m, x, method="linearized", chunk_size=5, return_diagnostics=True)
    assert diag.mode == "forward"
    torch.testing.assert_close(lv, ref, rtol=1e-10, atol=1e-10)


def test_untraceable_model_and_callable_layer_are_clear_errors():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.fc(x)
            return -self.fc(x)

    x = torch.randn(2, 4, dtype=D)
    with pytest.raises(LinearizeError, match="torch.fx could not trace Branchy.*method='streamed'"):
        fg.logvol(Branchy().to(D), x, method="linearized")
    with pytest.raises(LinearizeError, match="callable feature map cannot be traced"):
        fg.logvol(None, x, lambda z: torch.tanh(z), method="linearized")
    # the autograd engine handles both
    assert fg.logvol(Branchy().to(D), x, method="streamed").shape == (2,)


def test_auto_uses_linearized_when_it_traces_and_streamed_otherwise(monkeypatch):
    m = _resnet("gelu", width=2)
    x = torch.randn(2, 3, 6, 5, dtype=D)
    lv, diag = fg.logvol(m, x, return_diagnostics=True)  # far too small a run for the set-up to pay
    assert diag.method == "streamed" and "too small" in diag.reason
    torch.testing.assert_close(lv, fg.logvol(m, x, method="dense"), rtol=1e-10, atol=1e-10)
    # any run is long enough, and the linearised pass always counts as faster: auto switches
    monkeypatch.setattr(choice, "LINEARIZE_MIN_SECONDS", 0.0)
    monkeypatch.setattr(choice, "SWITCH_GAIN", float("inf"))
    lv, diag = fg.logvol(m, x, return_diagnostics=True, chunk_size=4)
    assert diag.method == "linearized" and "linearized took" in diag.reason
    torch.testing.assert_close(lv, fg.logvol(m, x, method="dense"), rtol=1e-10, atol=1e-10)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    lv, diag = fg.logvol(Branchy().to(D), torch.randn(2, 4, dtype=D), return_diagnostics=True)
    assert diag.method == "streamed"
    lv, diag = fg.logvol(None, x.flatten(1), lambda z: torch.tanh(z[:, :7]), return_diagnostics=True)
    assert diag.method == "streamed"


class Hooked(nn.Module):
    """A forward hook changes the output: torch.fx does not see hooks, so the traced graph is wrong."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.fc.register_forward_hook(lambda mod, inp, out: 2 * torch.tanh(out))

    def forward(self, x):
        return self.fc(x)


def test_traced_graph_that_differs_from_the_model_is_caught(monkeypatch):
    monkeypatch.setattr(choice, "LINEARIZE_MIN_SECONDS", 0.0)  # auto tries the linearised engine at once
    m = Hooked().to(D)
    x = torch.randn(2, 4, dtype=D)
    with pytest.raises(LinearizeError, match="differs from the model at the first point"):
        fg.logvol(m, x, method="linearized")
    lv, diag = fg.logvol(m, x, return_diagnostics=True)  # auto falls back to torch.func
    assert diag.method == "streamed" and "cannot be linearised" in diag.reason
    torch.testing.assert_close(lv, fg.logvol(m, x, method="dense"), rtol=1e-12, atol=1e-12)


def test_model_is_left_untouched():
    m = _resnet("relu")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    fg.logvol(m, torch.randn(2, 3, 8, 8, dtype=D), method="linearized", layer="layer2", pool=12)
    assert m.training and all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert isinstance(m.bn1, nn.BatchNorm2d)


@pytest.mark.gpu
def test_linearized_on_cuda_matches_cpu():
    m = _resnet("gelu")
    x = torch.randn(2, 3, 9, 7, dtype=D)
    cpu = fg.logvol(m, x, method="linearized", layer="layer3", pool=24)
    gpu = fg.logvol(m.cuda(), x.cuda(), method="linearized", layer="layer3", pool=24)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-10)
