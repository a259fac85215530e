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
        torch.testing.assert_close(
            fg.logvol(m32, x32, method="linearized"), fg.logvol(m32, x32, method="dense"), rtol=1e-4, atol=1e-3
        )
    finally:
        m.double()


def test_forward_mode_immersion():
    """d_out > d_in: JVP columns through the linear network."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.GELU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
    ).to(D)
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
    lv, diag = fg.logvol(m, x, return_diagnostics=True, chunk_size=1)  # auto falls back to torch.func
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


class NormsAndProducts(nn.Module):
    """LayerNorm over two dims (affine) and F.layer_norm without weight, SE-style gating broadcast over
    (H, W), a layer-scale product with a constant, x * x, and tanh-approximate GELU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, groups=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # depthwise
        self.ln = nn.LayerNorm([5, 3])
        self.gate = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.rand(4, 1, 1) + 0.5)

    def forward(self, x):
        h = self.ln(self.dw(F.gelu(self.conv(x), approximate="tanh")))
        s = torch.sigmoid(self.gate(h.mean((2, 3))))[:, :, None, None]
        h = self.scale * (s * h) + 0.3 * (h * h)
        return F.layer_norm(h.permute(0, 2, 3, 1), (4,)).flatten(1)


def test_layernorm_and_product_rules_match_torch_func():
    torch.manual_seed(0)
    m = NormsAndProducts().to(D).eval()
    lin = _check_against_torch_func(FeatureMap(m), torch.randn(3, 3, 5, 3, dtype=D))
    rules = [s.rule for s in lin.steps]
    assert rules.count("layernorm") == 2 and rules.count("mul") >= 3


class _Cube(torch.autograd.Function):
    """x^3 with a backward and no forward-mode (jvp) formula."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


def cube(x):
    return _Cube.apply(x)


torch.fx.wrap("cube")


class NoForwardAD(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return torch.tanh(cube(self.fc(x)))


def test_node_without_forward_ad_gets_the_transpose_of_its_vjp():
    torch.manual_seed(0)
    m = NoForwardAD().to(D).eval()
    x = torch.randn(3, 4, dtype=D)
    with pytest.raises(NotImplementedError):
        jvp(m, (x,), (x,))  # torch.func itself has no forward mode here
    lin = LinearGraph(FeatureMap(m)).linearize(x)
    ref = torch.stack([torch.func.jacrev(lambda z: m(z[None])[0])(x[i]) for i in range(3)])  # (P, 5, 4)
    T = torch.randn(2, 3, 4, dtype=D)
    torch.testing.assert_close(lin.jvp(T), torch.einsum("poi,kpi->kpo", ref, T), rtol=1e-12, atol=1e-14)


class Tuples(nn.Module):
    """Tuple-valued nodes: chunk, an LSTM's (out, (h, c)) with getitem of getitem, split of a carried tensor."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 3, batch_first=True)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=-1)
        out, (h, c) = self.lstm(x)
        p, q = torch.split(out, [1, 2], dim=1)
        return torch.cat([(a * b).flatten(1), h[0], c[0], q.flatten(1) - p.flatten(1)[:, :1]], dim=1)


def test_tuple_valued_nodes_are_never_constants():
    torch.manual_seed(0)
    m = Tuples().to(D).eval()
    _check_against_torch_func(FeatureMap(m), torch.randn(2, 3, 4, dtype=D))


def test_relu_closed_form_derivative_matches_autograd_at_zero_and_both_sides():
    x = torch.tensor([-1.0, -0.0, 0.0, 1e-300, 2.0], dtype=D)
    torch.testing.assert_close(
        linear_net._relu_derivative(x), linear_net._elementwise_derivative(torch.relu, x), rtol=0, atol=0
    )


def test_traced_graph_that_fails_at_a_node_is_a_linearize_error():
    """A graph that cannot run at these points (a batch size fixed in the model code) gives LinearizeError
    naming the node, not a raw torch error."""

    class Baked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).reshape(2, 3)  # only valid for 2 points

    m = Baked().to(D)
    with pytest.raises(LinearizeError, match="fails at node 'reshape'"):
        LinearGraph(FeatureMap(m)).linearize(torch.randn(3, 4, dtype=D))


class Shapes(nn.Module):
    """Channel shuffle (view, transpose, contiguous, view), permute, flatten from dim 0, unflatten, squeeze."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = self.conv(x)
        b, c, hh, ww = h.size()
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, -1, hh, ww)
        h = torch.tanh(h).permute(0, 2, 3, 1)
        h = self.fc(h).unsqueeze(1).flatten(2).squeeze(1)
        return torch.swapaxes(h.unflatten(1, (hh, -1)), -1, 1).reshape(-1)[None].reshape(b, -1)


def test_reshape_and_permute_rules_match_torch_func():
    torch.manual_seed(0)
    m = Shapes().to(D).eval()
    lin = _check_against_torch_func(FeatureMap(m), torch.randn(3, 4, 5, 3, dtype=D))
    rules = [s.rule for s in lin.steps]
    assert rules.count("func") == 1 and rules.count("reshape") >= 5 and rules.count("permute") == 3  # func: [None]
