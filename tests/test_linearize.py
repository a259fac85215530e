"""BatchNorm folding and the traced (linearised-once) JVP against the unmodified model."""
import pytest
import torch
from torch import nn
from torch.func import jvp, vmap

import fastgeom as fg
from fastgeom.engine.linearize import fold_batchnorm, linearized_jvp
from fastgeom.features import FeatureMap


def _block_net():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 5, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(5)
            self.act = nn.GELU()
            self.conv2 = nn.Conv2d(5, 3, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(3)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 7 * 5, 11))

        def forward(self, x):
            h = self.act(self.bn1(self.conv1(x)))
            return self.head(self.act(x + self.bn2(self.conv2(h))))

    net = Block().double()
    for bn in (net.bn1, net.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net


def test_fold_batchnorm_same_function_and_logvol():
    net = _block_net()
    x = torch.randn(4, 3, 7, 5, dtype=torch.float64)
    folded, n = fold_batchnorm(net, check=x[:2])
    assert n == 2 and isinstance(folded.bn1, nn.Identity) and isinstance(net.bn1, nn.BatchNorm2d)
    torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fg.logvol(folded, x, method="dense"), fg.logvol(net, x, method="dense"),
                               rtol=1e-10, atol=1e-10)


def test_fold_batchnorm_detects_wrong_order():
    class Swapped(nn.Module):  # bn registered after conv but applied elsewhere
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            return self.conv(self.bn(x)).flatten(1)

    m = Swapped().double()
    m.bn.running_mean.fill_(0.7)
    with pytest.raises(ValueError, match="does not directly follow"):
        fold_batchnorm(m, check=torch.randn(2, 2, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linearized_jvp_matches_jvp(dtype):
    net = _block_net().to(dtype)
    fmap = FeatureMap(net.eval())
    x = torch.randn(3, 3, 7, 5, dtype=dtype)
    T = torch.randn(4, 3, 3, 7, 5, dtype=dtype)
    out, fn = linearized_jvp(fmap, x)
    want = vmap(lambda t: jvp(fmap, (x,), (t,))[1])(T)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fn(T), want, rtol=tol, atol=tol)
    torch.testing.assert_close(out, fmap(x))


@pytest.mark.gpu
def test_fold_and_linearize_on_cuda():
    net = _block_net().cuda()
    x = torch.randn(3, 3, 7, 5, dtype=torch.float64, device="cuda")
    folded, n = fold_batchnorm(net, check=x)
    assert n == 2
    torch.testing.assert_close(fg.logvol(folded, x, method="streamed").cpu(),
                               fg.logvol(net.cpu(), x.cpu(), method="dense"), rtol=1e-10, atol=1e-10)
