"""fastgeom.logvol / spectrum / jacobian / metric against an independent float64 brute force
(torch.func.jacrev + torch.linalg.svdvals), and dense vs streamed agreement."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from fg_oracle import brute_jacobian, brute_logvol, rel_err
from torch import nn

import fastgeom as fg
from fastgeom.engine import streamed
from fastgeom.features import pool_window

D = torch.float64


def mlp(d_in, d_out, hidden=9, act=nn.Tanh):
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, d_out)).to(
        D
    )


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.gelu(x + self.bn2(self.conv2(F.gelu(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    """conv stem -> residual block (BatchNorm, GELU) -> Dropout -> linear head."""

    def __init__(self, c_in=2, c=4, hw=6, n_out=5):
        super().__init__()
        self.stem = nn.Conv2d(c_in, c, 3, padding=1)
        self.block = Block(c)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(c * hw * hw, n_out)

    def forward(self, x):
        return self.head(self.drop(self.block(F.gelu(self.stem(x))).flatten(1)))


def small_cnn():
    m = SmallCNN().to(D)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval and train mode differ
        for bn in (m.block.bn1, m.block.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    return m


def inner_conv2(m):
    """Truncated forward of SmallCNN up to block.conv2 (the independent definition of that layer)."""
    return lambda z: m.block.conv2(F.gelu(m.block.bn1(m.block.conv1(F.gelu(m.stem(z))))))


# ---------------------------------------------------------------- MLPs vs brute force


@pytest.mark.parametrize("d_in,d_out", [(7, 3), (3, 7), (6, 6)], ids=["submersion", "immersion", "square"])
@pytest.mark.parametrize("method", ["dense", "streamed", "linearized", "auto"])
def test_mlp_vs_brute_force(d_in, d_out, method):
    m = mlp(d_in, d_out)
    x = torch.randn(5, d_in, dtype=D)
    ref = brute_logvol(brute_jacobian(m, x))
    lv, diag = fg.logvol(m, x, method=method, return_diagnostics=True)
    assert lv.dtype == D and lv.shape == (5,)
    assert rel_err(lv, ref) < 1e-12
    assert diag.rank.tolist() == [min(d_in, d_out)] * 5
    assert diag.d_in == d_in and diag.d_out == d_out


def test_float32_model_accumulates_in_float64():
    m = mlp(7, 3).float()
    x = torch.randn(4, 7)
    lv = fg.logvol(m, x)
    assert lv.dtype == D
    J = fg.jacobian(m, x)  # float32 network pass, returned as float64
    assert J.dtype == D
    assert rel_err(lv, brute_logvol(J)) < 1e-12  # the factorisation of that J is float64-accurate
    truth = brute_logvol(brute_jacobian(m.double(), x.double()))
    assert 1e-12 < rel_err(lv, truth) < 1e-5  # float32 network: float32-level error, no more
    m.float()
    assert rel_err(fg.logvol(m, x, dtype=D), truth) < 1e-12  # dtype= runs the network in float64


# ---------------------------------------------------------------- CNN, train mode, inner / callable layers


def test_cnn_train_mode_equals_eval_and_is_restored():
    m = small_cnn()
    x = torch.randn(3, 2, 6, 6, dtype=D)
    m.eval()
    ref = brute_logvol(brute_jacobian(m, x))
    m.train()
    m.block.bn2.eval()  # a submodule in its own mode must keep it
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    for method in ("dense", "streamed", "linearized"):
        lv = fg.logvol(m, x, method=method)
        assert rel_err(lv, ref) < 1e-12, method
    assert m.training and m.block.training and m.drop.training and m.block.bn1.training
    assert not m.block.bn2.training
    assert all(p.grad is None for p in m.parameters())
    for k, v in m.named_buffers():  # the BatchNorm running statistics were not updated
        assert torch.equal(v, buffers[k]), k


def test_batchnorm1d_train_mode_single_point():
    """A train-mode BatchNorm1d cannot see one point; fastgeom must evaluate in eval mode (probe included)."""
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)).to(D)
    x = torch.randn(4, 5, dtype=D)
    m.eval()
    ref = brute_logvol(brute_jacobian(m, x))
    m.train()
    assert rel_err(fg.logvol(m, x), ref) < 1e-12
    assert rel_err(fg.logvol(m, x[:1]), ref[:1]) < 1e-12
    assert m.training


def test_inner_named_layer_stops_forward():
    m = small_cnn().eval()
    x = torch.randn(2, 2, 6, 6, dtype=D)
    ref = brute_logvol(brute_jacobian(inner_conv2(m), x))

    def boom(*_):  # the layers after block.conv2 must not run
        raise AssertionError("forward pass continued past the chosen layer")

    m.head.register_forward_pre_hook(boom)
    for method in ("dense", "streamed"):
        assert rel_err(fg.logvol(m, x, "block.conv2", method=method), ref) < 1e-12


def test_callable_layer():
    m = mlp(6, 4)
    x = torch.randn(3, 6, dtype=D)
    feat = lambda z: torch.sin(m[0](z)) * 2.0  # noqa: E731
    ref = brute_logvol(brute_jacobian(feat, x))
    assert rel_err(fg.logvol(None, x, feat), ref) < 1e-12
    assert rel_err(fg.logvol(m, x, feat, method="dense"), ref) < 1e-12


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "pool,kernel",
    [(16, (3, 3)), ((2, 3), (2, 3)), ({"kernel": 3}, (3, 3)), ({"size": 4 * 3 * 6}, (2, 1)), (4 * 1 * 2, (6, 3))],
)
def test_pool_vs_brute_force_of_pooled_map(pool, kernel):
    m = small_cnn().eval()
    x = torch.randn(2, 2, 6, 6, dtype=D)
    f = inner_conv2(m)
    ref = brute_logvol(brute_jacobian(lambda z: F.avg_pool2d(f(z), kernel, kernel), x))
    assert rel_err(fg.logvol(m, x, "block.conv2", pool=pool), ref) < 1e-12


def test_pool_rule_reproduces_cifar_resnet34_readouts():
    shapes = {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "layer4": (512, 4, 4)}
    want = {"layer1": (16, 8), "layer2": (8, 8), "layer3": (8, 4), "layer4": (4, 4)}
    for name, (C, H, W) in shapes.items():
        kh, kw = pool_window((C, H, W), 512)
        assert (kh, kw) == want[name], name
        assert C * (H // kh) * (W // kw) == 512


# ---------------------------------------------------------------- torchvision ResNet-18, CIFAR stem


@pytest.mark.slow
def test_resnet18_cifar_stem():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    m = m.to(D).eval()
    # 8x8 inputs keep this at seconds (float64 convolutions on CPU are slow; 16x16 takes minutes)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    J = brute_jacobian(m, x, chunk_size=256)
    assert J.shape == (2, 512, 192)
    ref = brute_logvol(J)
    lv, diag = fg.logvol(m, x, chunk_size=192, return_diagnostics=True)
    assert diag.mode == "forward"  # d_in = 192 < 512 = d_out: JVPs
    assert rel_err(lv, ref) < 1e-10


# ---------------------------------------------------------------- dense vs streamed


@pytest.mark.parametrize("d_in,d_out", [(13, 5), (5, 11), (9, 9)])
def test_dense_and_streamed_agree(d_in, d_out):
    m = mlp(d_in, d_out, hidden=17, act=nn.GELU)
    x = torch.randn(7, d_in, dtype=D)
    dense = fg.logvol(m, x, method="dense")
    want_mode = "reverse" if d_out <= d_in else "forward"
    for method in ("streamed", "linearized"):
        for chunk in (1, 2, 3, 4, 100, None):
            lv, diag = fg.logvol(m, x, method=method, chunk_size=chunk, return_diagnostics=True)
            assert diag.mode == want_mode and diag.method == method
            assert rel_err(lv, dense) < 1e-10, (method, chunk)
    # a budget so small that points are batched 1 by 1
    lv, diag = fg.logvol(m, x, method="streamed", chunk_size=3, budget=1, return_diagnostics=True)
    assert diag.points_per_batch == 1
    assert rel_err(lv, dense) < 1e-10
    # and one that batches some but not all points (7 points -> several uneven batches)
    per_point = fg.engine.plan(fg.features.FeatureMap(m), x, d_in, d_out, chunk_size=2, budget=2**40).point_bytes
    lv, diag = fg.logvol(m, x, method="streamed", chunk_size=2, budget=3 * per_point, return_diagnostics=True)
    assert 1 < diag.points_per_batch < 7
    assert rel_err(lv, dense) < 1e-10
    J1 = fg.jacobian(m, x, method="dense")
    J2 = fg.jacobian(m, x, method="streamed", chunk_size=4)
    assert torch.allclose(J1, J2, rtol=1e-12, atol=1e-14)


def test_spectrum_jacobian_metric_vs_brute_force():
    m = mlp(8, 5)
    x = torch.randn(3, 8, dtype=D)
    J = brute_jacobian(m, x)
    s = fg.spectrum(m, x)
    assert s.shape == (3, 5) and s.dtype == D
    assert torch.allclose(s, torch.linalg.svdvals(J), rtol=1e-12, atol=0)
    assert torch.all(s[:, :-1] >= s[:, 1:])
    assert torch.allclose(fg.spectrum(m, x, k=2, method="dense"), s[:, :2], rtol=1e-12, atol=0)
    Jf = fg.jacobian(m, x)
    assert Jf.shape == (3, 5, 8) and torch.allclose(Jf, J, rtol=1e-13, atol=1e-15)
    g = fg.metric(m, x)
    assert g.shape == (3, 8, 8) and torch.allclose(g, J.mT @ J, rtol=1e-12, atol=1e-15)
    assert torch.allclose(fg.metric(m, x, normalize=True), J.mT @ J / 5, rtol=1e-12, atol=1e-15)
    # normalize=True divides the features by sqrt(d_out)
    assert rel_err(fg.logvol(m, x, normalize=True), brute_logvol(J / 5**0.5)) < 1e-12


def test_empty_batch():
    m = mlp(4, 3)
    x = torch.zeros(0, 4, dtype=D)
    for method in ("dense", "streamed"):
        lv = fg.logvol(m, x, method=method)
        assert lv.shape == (0,) and lv.dtype == D
    assert fg.spectrum(m, x).shape == (0, 3)
    assert fg.jacobian(m, x).shape == (0, 3, 4)
    assert fg.metric(m, x).shape == (0, 4, 4)
    with pytest.raises(ValueError, match="rejected points of shape"):  # still validated
        fg.logvol(m, torch.zeros(0, 5, dtype=D))


# ---------------------------------------------------------------- TF32 guard


def _tf32_state():
    """Effective TF32 settings: the fp32_precision API where torch has it, else the legacy flags."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        return (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision)
    return (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.get_float32_matmul_precision())


def test_tf32_off_during_computation_and_restored_legacy_api():
    """A user who enabled TF32 with the legacy API (allow_tf32 / set_float32_matmul_precision)."""
    m = mlp(5, 3)
    seen = []

    def feat(z):
        seen.append(_tf32_state())
        if fail["on"] and len(seen) > 1:
            raise RuntimeError("failure inside the computation")
        return m(z)

    fail = {"on": False}
    b = torch.backends
    old = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        b.cuda.matmul.allow_tf32 = True
        b.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        before = _tf32_state()
        fg.logvol(None, torch.randn(2, 5, dtype=D), feat)
        after = _tf32_state()
        legacy_after = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        fail["on"], seen[:] = True, []
        with pytest.raises(RuntimeError, match="failure inside"):
            fg.logvol(None, torch.randn(2, 5, dtype=D), feat)
        after_err = _tf32_state()
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])
    assert after == before and after_err == before
    assert legacy_after == (True, True, "high")  # the user's legacy settings read back unchanged
    assert len(seen) >= 2
    off = ("ieee", "ieee", "ieee") if hasattr(b.cuda.matmul, "fp32_precision") else (False, False, "highest")
    assert seen[-1] == off


def test_tf32_guard_with_the_new_fp32_precision_api():
    """Users of torch's fp32_precision API: torch then refuses legacy allow_tf32 reads (RuntimeError about
    mixing APIs); logvol must still work, compute in "ieee" and restore the user's settings."""
    b = torch.backends
    if not hasattr(b.cuda.matmul, "fp32_precision"):
        pytest.skip("torch without the fp32_precision API")
    leaves = [
        (b.cuda.matmul, "fp32_precision"),
        (b.cudnn, "fp32_precision"),
        (b.cudnn.conv, "fp32_precision"),
        (b.cudnn.rnn, "fp32_precision"),
    ]
    orig = [getattr(o, a) for o, a in leaves]
    m = mlp(5, 3)
    seen = []

    def feat(z):
        seen.append((b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision))
        return m(z)

    try:
        b.cuda.matmul.fp32_precision = "tf32"
        b.cudnn.fp32_precision = "tf32"
        b.cudnn.conv.fp32_precision = "tf32"
        b.cudnn.rnn.fp32_precision = "tf32"
        with pytest.raises(RuntimeError):  # the situation this guards against
            _ = b.cuda.matmul.allow_tf32
        x = torch.randn(2, 5, dtype=D)
        lv = fg.logvol(None, x, feat)
        after = [getattr(o, a) for o, a in leaves]
    finally:
        for (o, a), v in zip(leaves, orig):
            setattr(o, a, v)
    assert after == ["tf32"] * 4
    assert seen[-1] == ("ieee", "ieee", "ieee")
    assert rel_err(lv, brute_logvol(brute_jacobian(m, x))) < 1e-12
    _ = b.cuda.matmul.allow_tf32  # legacy reads work again once the originals are back


# ---------------------------------------------------------------- OOM back-off (engine level)


def _injector(stage, fail_on):
    state = {"n": 0, "raised": 0}

    def inject(s):
        if s != stage:
            return
        state["n"] += 1
        if state["n"] in fail_on:
            state["raised"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by test)")

    return inject, state


@pytest.mark.parametrize(
    "mode,stage,fail_on",
    [
        ("reverse", "chunk", {1}),
        ("reverse", "chunk", {1, 2}),
        ("forward", "chunk", {2, 3}),
        ("reverse", "forward", {1, 2}),
    ],
)
@pytest.mark.parametrize("method", ["streamed", "linearized"])
def test_oom_backoff_gives_identical_results(mode, stage, fail_on, method):
    d_in, d_out = (11, 6) if mode == "reverse" else (6, 11)
    m = mlp(d_in, d_out, hidden=13)
    x = torch.randn(5, d_in, dtype=D)
    clean = fg.logvol(m, x, method=method, chunk_size=4)
    inject, state = _injector(stage, fail_on)
    streamed.fault_injector = inject
    try:
        lv, d = fg.logvol(m, x, method=method, chunk_size=4, return_diagnostics=True)
    finally:
        streamed.fault_injector = None
    assert state["raised"] == len(fail_on)
    assert d.mode == mode
    # the same rows/columns are recomputed with smaller vmap batches: equal up to rounding
    assert torch.allclose(lv, clean, rtol=1e-14, atol=0)
    J_clean = fg.jacobian(m, x, method="streamed", chunk_size=4)
    inject, _ = _injector(stage, fail_on)
    streamed.fault_injector = inject
    try:
        J = fg.jacobian(m, x, method="streamed", chunk_size=4)
    finally:
        streamed.fault_injector = None
    assert torch.allclose(J, J_clean, rtol=1e-14, atol=1e-16)
    if stage == "chunk":
        assert d.chunk == 4 // 2 ** len(fail_on)  # halved once per injected OOM
    else:
        assert d.points_per_batch == 5 // 2 ** len(fail_on)  # a failed forward halves the point batch


def test_oom_at_one_point_and_chunk_one_is_a_clear_memoryerror():
    m = mlp(6, 3)

    def inject(s):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. (injected by test)")

    streamed.fault_injector = inject
    try:
        with pytest.raises(MemoryError, match="out of memory even at 1 point and chunk 1"):
            fg.logvol(m, torch.randn(3, 6, dtype=D), method="streamed", chunk_size=2)
    finally:
        streamed.fault_injector = None


def test_non_oom_errors_are_not_retried():
    m = mlp(6, 3)
    n = {"k": 0}

    def inject(s):
        n["k"] += 1
        raise RuntimeError("some unrelated failure")

    streamed.fault_injector = inject
    try:
        with pytest.raises(RuntimeError, match="unrelated failure"):
            fg.logvol(m, torch.randn(3, 6, dtype=D), method="streamed")
    finally:
        streamed.fault_injector = None
    assert n["k"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fg.logvol(m, torch.randn(2, 6, dtype=D))  # the engine works again after the fault
