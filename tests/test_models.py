"""CIFAR ResNets (activation in every block, per-block pooled readouts, widths) and SSL heads/losses."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgeom as fg
from fastgeom.models import cifar_resnet, ssl

BLOCKS = ("layer1", "layer2", "layer3", "layer4")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blocks(model):
    return [blk for name in BLOCKS for blk in getattr(model, name)]


@pytest.mark.parametrize("arch,n_blocks", [("resnet18", 8), ("resnet34", 16), ("resnet50", 16)])
def test_activation_module_count_every_block(arch, n_blocks):
    """Counting modules: ReLU nets hold no GELU, GELU nets no ReLU; every block and the stem hold the chosen one."""
    for act, cls, other in [("relu", nn.ReLU, nn.GELU), ("gelu", nn.GELU, nn.ReLU)]:
        m = cifar_resnet(arch, act, 10, width=8)
        assert not any(isinstance(mod, other) for mod in m.modules()), f"{arch} {act}: a {other.__name__} survived"
        assert sum(isinstance(mod, cls) for mod in m.modules()) == 1 + n_blocks
        assert isinstance(m.relu, cls)
        blocks = _blocks(m)
        assert len(blocks) == n_blocks and all(isinstance(b.relu, cls) for b in blocks)


def _block_reference(blk, x, act):
    """Block forward written out with an explicit activation function (BasicBlock or Bottleneck)."""
    if hasattr(blk, "conv3"):
        h = act(blk.bn1(blk.conv1(x)))
        h = act(blk.bn2(blk.conv2(h)))
        h = blk.bn3(blk.conv3(h))
    else:
        h = blk.bn2(blk.conv2(act(blk.bn1(blk.conv1(x)))))
    skip = blk.downsample(x) if blk.downsample is not None else x
    return act(h + skip)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_activation_numerically_in_every_block(arch):
    """Same weights, relu vs gelu: every block's forward matches the formula with ITS activation and
    differs between the two nets (so the activation really acts inside each block)."""
    torch.manual_seed(1)
    mr = cifar_resnet(arch, "relu", 10, width=4).double().eval()
    mg = cifar_resnet(arch, "gelu", 10, width=4).double().eval()
    mg.load_state_dict(mr.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        xr = mr.relu(mr.bn1(mr.conv1(x)))
        for br, bg in zip(_blocks(mr), _blocks(mg)):
            yr, yg = br(xr), bg(xr)
            torch.testing.assert_close(yr, _block_reference(br, xr, F.relu), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(yg, _block_reference(bg, xr, F.gelu), rtol=1e-12, atol=1e-12)
            assert (yr - yg).abs().max() > 1e-3
            xr = yr


def test_resnet50_features_and_widths():
    m = cifar_resnet(50, "gelu", None).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 2048)
    assert cifar_resnet(50, "relu", 10).fc.in_features == 2048
    assert cifar_resnet(34, "relu", 10).fc.in_features == 512
    assert cifar_resnet(18, "gelu", 10, width=8).fc.in_features == 64
    assert isinstance(m.maxpool, nn.Identity) and m.conv1.stride == (1, 1) and m.conv1.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="width"):
        cifar_resnet(18, "gelu", 10, width=0)


# pooling windows worked out by hand for width 4 on 8x8 inputs, pool=32 (C * oh * ow = 32, ow in {oh, 2 oh})
HAND_WINDOWS = {"layer1": (4, 2), "layer2": (2, 2), "layer3": (2, 1), "layer4": (1, 1)}


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_per_block_pooling_vs_bruteforce(act):
    """logvol(model, x, layer=block, pool=N) == sum log svd of the Jacobian (autograd, float64) of a
    hand-written truncated forward with hand-chosen average-pool windows."""
    torch.manual_seed(2)
    m = cifar_resnet("resnet18", act, 10, width=4).double().eval()
    for p in m.modules():  # non-trivial BatchNorm statistics
        if isinstance(p, nn.BatchNorm2d):
            p.running_mean.normal_(0, 0.1)
            p.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def truncated(xi, upto):
        h = m.relu(m.bn1(m.conv1(xi[None])))
        for name in BLOCKS:
            h = getattr(m, name)(h)
            if name == upto:
                return F.avg_pool2d(h, HAND_WINDOWS[name]).reshape(-1)

    checked = []
    for name in BLOCKS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ReLU: dead pooled units / rounding-level values (checked below)
            got, diag = fg.logvol(m, x, layer=name, pool=32, method="streamed", return_diagnostics=True)
        for i in range(len(x)):
            J = torch.autograd.functional.jacobian(lambda xi, name=name: truncated(xi, name), x[i]).reshape(32, -1)
            J = J[J.ne(0).any(1)][:, J.ne(0).any(0)]  # pseudo-det: dead (exactly zero) pooled units removed
            s = torch.linalg.svdvals(J)
            if diag.n_rounding[i] > 0:  # flagged as numerically singular: the brute force must agree
                assert s[-1] < 1e-12 * s[0], (name, i)
                continue
            k = int(diag.rank[i])
            if diag.n_dropped[i] > 0:  # dropped at the rounding level: singular up to rounding, the rest kept
                assert s[k] < 1e-12 * s[0] and s[k - 1] > 1e-10 * s[0], (name, i)
            checked.append((name, i))
            ref = torch.log(s[:k]).sum()
            assert abs(float(got[i] - ref)) < 1e-8 * abs(float(ref)) + 1e-9, (name, i)
    assert len(checked) >= 6, checked
    # layer4 pooled to 32 = the avgpool features
    torch.testing.assert_close(fg.logvol(m, x[:1], layer="layer4", pool=32), fg.logvol(m, x[:1], layer="avgpool"))


# ---------------------------------------------------------------------------------------------
# SSL heads and losses
# ---------------------------------------------------------------------------------------------
def test_barlow_twins_loss_vs_explicit_sums():
    torch.manual_seed(3)
    z1, z2 = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    lam = 0.005
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    ref = 0.0
    for i in range(5):
        for j in range(5):
            c = sum(a[n, i] * b[n, j] for n in range(7)) / 7
            ref += (1 - c) ** 2 if i == j else lam * c**2
    got = ssl.barlow_twins_loss(z1, z2, lam, eps=0.0)
    assert abs(float(got) - float(ref)) < 1e-12
    assert float(ssl.barlow_twins_loss(z1, z1, lam)) < float(got)  # identical views: diagonal term vanishes
    with pytest.raises(ValueError, match="N >= 2"):
        ssl.barlow_twins_loss(z1[:1], z2[:1])


def test_nt_xent_vs_explicit_loop():
    torch.manual_seed(4)
    z1, z2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    T = 0.07
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    ref = 0.0
    for i in range(n2):
        pos = (i + 5) % n2
        den = sum(math.exp(float(z[i] @ z[k]) / T) for k in range(n2) if k != i)
        ref += -math.log(math.exp(float(z[i] @ z[pos]) / T) / den)
    assert abs(float(ssl.nt_xent_loss(z1, z2, T)) - ref / n2) < 1e-9
    with pytest.raises(ValueError, match="temperature"):
        ssl.nt_xent_loss(z1, z2, 0.0)


def test_ssl_heads_and_augmentations():
    bb = cifar_resnet(18, "gelu", None, width=4)
    bt = ssl.BarlowTwins(bb, proj_dim=16)
    assert isinstance(bt.projector, nn.Linear) and bt.projector.in_features == 32
    sc = ssl.SimCLR(cifar_resnet(18, "gelu", None, width=4), proj_dim=12)
    assert [type(mm) for mm in sc.projector] == [nn.Linear, nn.ReLU, nn.Linear] and sc.projector[-1].out_features == 12
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    for model in (bt, sc):
        loss = model.loss(x1, x2)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert model.backbone.conv1.weight.grad is not None
    img = torch.rand(3, 16, 16)
    for t1, t2 in (ssl.barlow_twins_augmentations(16), ssl.simclr_augmentations(16)):
        v1, v2 = t1(img), t2(img)
        assert v1.shape == v2.shape == (3, 16, 16) and not torch.equal(v1, v2)
    # Barlow Twins views are asymmetric: blur always in view 1, solarisation only in view 2
    a, b = ssl.barlow_twins_augmentations(32)
    assert "GaussianBlur" in repr(a) and "RandomSolarize" not in repr(a) and "RandomSolarize" in repr(b)
