"""Every exact engine on small torchvision families and tuple-module branches, in float64, in both modes,
against an independent J (torch.func.jacrev on the unmodified model, one point at a time).

- reverse mode: the full J from ``dense``, ``streamed`` and ``linearized`` (``StreamedEngine``);
- forward mode: J t for random tangents t from the streamed pass and the Linearization (a full forward
  J of a 3072-pixel input would take minutes), and the full J where d_out > d_in (branches, ViT tokens);
- ``auto`` (``fg.logvol``), when its cost rule lets it try, takes the linearised engine on every family;
- a GRU / LSTM / MHA branch that contributes 1e-6 of J is not dropped (the silent-wrong-answer case);
- in-place ops, in-place writes that cannot be rewritten, and the strict first-point check.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from fg_oracle import brute_jacobian
from model_zoo import FAMILIES, tuple_branch, vit_tokens
from torch import nn

import fastgeom as fg
from fastgeom.api import prepare
from fastgeom.engine import StreamedEngine, batching, choice, guards, jacobian_dense
from fastgeom.engine.linear_net import LinearGraph, LinearizeError, validated_linearize
from fastgeom.engine.streamed import AutogradPass
from fastgeom.features import FeatureMap

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _close(got, want, rtol=1e-10):
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= rtol, f"relative error {err:.2e} > {rtol}"


def _blocks(fmap, x, d_out, mode, linearize=None, chunk=64):
    eng = StreamedEngine(fmap, x[:1], x[0].numel(), d_out, mode=mode, make_pass=linearize)
    with guards.ad_guards():  # until streamed.py enters ad_guards itself (forward AD through attention)
        return torch.cat([J for _, J, _ in eng.run(x, chunk_size=chunk)])


@pytest.fixture
def auto_always_tries_linearized(monkeypatch):
    """auto tries the linearised engine on any run and keeps it (its cost rule is tested in test_geometry)."""
    monkeypatch.setattr(choice, "LINEARIZE_MIN_SECONDS", 0.0)
    monkeypatch.setattr(choice, "SWITCH_GAIN", float("inf"))


@pytest.fixture(scope="module")
def family_cache():
    return {}


def _family(name, cache):
    if name not in cache:
        m, x = FAMILIES[name]()
        ref = brute_jacobian(lambda z: m(z).flatten(1), x)
        cache[name] = (m, x, ref)
    return cache[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_every_exact_engine_matches_float64_reference(name, family_cache):
    m, x, ref = _family(name, family_cache)
    fmap, d_in, d_out = prepare(m, x, None, None, None)
    assert d_out < d_in
    _close(jacobian_dense(fmap, x, d_out), ref)
    _close(_blocks(fmap, x, d_out, "reverse"), ref)
    lz = validated_linearize(fmap, x, d_out)
    _close(_blocks(fmap, x, d_out, "reverse", linearize=lz), ref)
    # forward mode on random tangents: J t against the reference
    T = torch.randn(3, *x.shape, dtype=D)
    want = torch.einsum("pod,kpd->kpo", ref, T.flatten(2))
    with guards.ad_guards():
        _close(AutogradPass(fmap, x, "forward").jvp(T), want)
    _close(lz(x, "forward").jvp(T), want)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_auto_takes_the_linearised_engine(name, family_cache, auto_always_tries_linearized):
    m, x, ref = _family(name, family_cache)
    lv, diag = fg.logvol(m, x, return_diagnostics=True, chunk_size=4)  # the second chunk is the trial
    assert diag.method == "linearized", diag.reason
    want = torch.linalg.svdvals(ref).log().sum(-1)
    torch.testing.assert_close(lv, want, rtol=1e-9, atol=1e-9)


def test_rules_cover_gating_layernorm_and_inplace_families(family_cache):
    """The hand-written rules (not only torch.func) run on the families they were written for."""

    def rules(name):
        m, x, _ = _family(name, family_cache)
        return {s.rule for s in LinearGraph(FeatureMap(m)).linearize(x).steps}

    assert {"mul", "act", "conv"} <= rules("mobilenet_v3_small")  # SE gating, hardswish, depthwise convs
    assert {"layernorm", "mul", "linear"} <= rules("convnext_small_config")  # LayerNorm2d, layer scale
    assert {"act", "add", "conv"} <= rules("resnet18")  # ReLU(inplace=True), out += identity


@pytest.mark.parametrize("kind", ["mha", "lstm", "gru"])
@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_tuple_module_branch_every_engine_both_modes(kind, scale, auto_always_tries_linearized):
    """h = lin(x) + scale * module(x)[0]: a tuple-returning module, not a constant of x. At scale 1e-6 the
    branch is below the old 1e-4 check: dropping it would show as a 1e-6 error here."""
    m, x = tuple_branch(kind, scale, out=6)  # d_in 12, d_out 18
    ref = brute_jacobian(lambda z: m(z).flatten(1), x)
    fmap, d_in, d_out = prepare(m, x, None, None, None)
    assert d_out > d_in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", batching.BatchingFallbackWarning)  # GRU/LSTM: a loop over points
        _close(jacobian_dense(fmap, x, d_out), ref, 1e-12)
    lz = validated_linearize(fmap, x, d_out)
    for mode in ("reverse", "forward"):
        _close(_blocks(fmap, x, d_out, mode, chunk=5), ref, 1e-12)
        _close(_blocks(fmap, x, d_out, mode, linearize=lz, chunk=5), ref, 1e-12)
    if kind == "mha":
        return  # auto's first chunk is the streamed pass in forward mode: test_api_forward_mode_through_attention
    lv, diag = fg.logvol(m, x, return_diagnostics=True, chunk_size=4)
    assert diag.method == "linearized", diag.reason
    torch.testing.assert_close(lv, torch.linalg.svdvals(ref).log().sum(-1), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("method", ["auto", "streamed"])
def test_api_forward_mode_through_attention(method, auto_always_tries_linearized):
    m, x = tuple_branch("mha", 1.0, out=6)
    ref = brute_jacobian(lambda z: m(z).flatten(1), x)
    lv = fg.logvol(m, x, method=method, chunk_size=4)
    torch.testing.assert_close(lv, torch.linalg.svdvals(ref).log().sum(-1), rtol=1e-11, atol=1e-11)


def test_vit_token_layer_larger_than_input_forward_mode():
    """5 tokens x 48 > 3 x 8 x 8: jacfwd / forward JVPs through nn.MultiheadAttention (no MHA fast path,
    math attention kernel)."""
    m, x, layer = vit_tokens()
    fmap, d_in, d_out = prepare(m, x, layer, None, None)
    assert d_out > d_in
    mod = dict(m.named_modules())[layer]
    box = {}

    def feat(z):
        h = mod.register_forward_hook(lambda _m, _i, o: box.__setitem__("o", o))
        try:
            m(z)
        finally:
            h.remove()
        return box["o"].flatten(1)

    ref = brute_jacobian(feat, x)
    _close(jacobian_dense(fmap, x, d_out), ref)
    lz = validated_linearize(fmap, x, d_out)
    _close(_blocks(fmap, x, d_out, "forward", linearize=lz, chunk=256), ref)
    _close(_blocks(fmap, x, d_out, "forward", chunk=256), ref)
    # the settings are restored after every pass
    assert torch.backends.mha.get_fastpath_enabled()


def test_ad_guards_set_and_restore():
    torch.backends.mha.set_fastpath_enabled(True)
    with guards.ad_guards():
        assert not torch.backends.mha.get_fastpath_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.mha.get_fastpath_enabled() and torch.backends.cuda.flash_sdp_enabled()


def test_batching_vmap_falls_back_to_a_loop_and_keeps_model_errors():
    def f(t):  # .item() has no batching rule
        return t * t.sum().item()

    x = torch.randn(4, 3, dtype=D)
    with pytest.warns(batching.BatchingFallbackWarning, match="Python loop"):
        got = batching.vmap(f, key="test: item")(x)
    torch.testing.assert_close(got, torch.stack([f(r) for r in x]))
    got2 = batching.vmap(lambda a, b: (a * b, a), in_dims=(0, None))(x, x[0])  # pytree outputs, unmapped args
    torch.testing.assert_close(got2[0], x * x[0])

    def broken(t):
        raise ValueError("model bug")

    with pytest.raises(ValueError, match="model bug"):
        batching.vmap(broken)(x)


class InPlace(nn.Module):
    """x += y, t.mul_(), F.relu(inplace=True), ReLU(inplace=True), t.sigmoid_(): a reader of the mutated
    tensor after the op (a + d, b[:, :4]) must see the mutated value."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.fc1(x)
        b = 2 * a  # reads a before the in-place ops
        a += b
        a.mul_(torch.tanh(b))
        c = F.relu(a, inplace=True)  # c is a
        d = self.act(c - 1.0)
        b.sigmoid_()
        return self.fc2(a + d) * b[:, :4]


def test_inplace_ops_are_rewritten_with_their_semantics():
    torch.manual_seed(0)
    m = InPlace().to(D).eval()
    x = torch.randn(3, 5, dtype=D)
    ref = brute_jacobian(lambda z: m(z), x)
    fmap, _, d_out = prepare(m, x, None, None, None)
    lz = validated_linearize(fmap, x, d_out)
    for mode in ("reverse", "forward"):
        _close(_blocks(fmap, x, d_out, mode, linearize=lz), ref, 1e-12)


class SetItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        h[:, :1].zero_()  # an in-place write (into a view) with no out-of-place form
        return torch.tanh(h)


def test_inplace_write_without_rewrite_is_a_linearize_error_and_auto_falls_back(auto_always_tries_linearized):
    m = SetItem().to(D).eval()
    x = torch.randn(2, 4, dtype=D)
    fmap, _, d_out = prepare(m, x, None, None, None)
    with pytest.raises(LinearizeError, match="writes in place"):
        validated_linearize(fmap, x, d_out)
    _, diag = fg.logvol(m, x, return_diagnostics=True, chunk_size=1)
    assert diag.method == "streamed" and "cannot be linearised" in diag.reason and "writes in place" in diag.reason


class Hooked(nn.Module):
    """A forward hook adds eps * tanh(out): torch.fx does not see hooks."""

    def __init__(self, eps):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.fc.register_forward_hook(lambda mod, inp, out: out + eps * torch.tanh(3 * out))

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_first_point_check_catches_a_1e8_contribution(dtype):
    """The missed part of J is 1e-8 of it: caught in float64, and for a float32 model by the float64 copy."""
    torch.manual_seed(0)
    m = Hooked(1e-8).to(dtype).eval()
    x = torch.randn(2, 6, dtype=dtype)
    fmap, _, d_out = prepare(m, x, None, None, None)
    with pytest.raises(LinearizeError, match="differs from the model at the first point"):
        validated_linearize(fmap, x, d_out)
    m0 = Hooked(0.0).to(dtype).eval()  # the same graph without the missed part validates
    fmap0, _, _ = prepare(m0, x, None, None, None)
    validated_linearize(fmap0, x, d_out)
