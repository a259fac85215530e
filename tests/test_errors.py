"""Bad input gets a clear exception (ValueError / TypeError / KeyError family) naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastgeom as fg

D = torch.float64
ALL = [fg.logvol, fg.spectrum, fg.jacobian]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential()
        self.block.add_module("conv1", nn.Conv2d(1, 2, 3))
        self.block.add_module("conv2", nn.Conv2d(2, 2, 3))
        self.unused = nn.Linear(3, 3)
        self.rnn = nn.GRU(2, 2, batch_first=True)

    def forward(self, x):
        h = self.block(x)  # (B, 2, H-4, W-4)
        out, _ = self.rnn(h.flatten(2).mT)
        return out.flatten(1)


@pytest.fixture
def net():
    return Net().to(D)


@pytest.mark.parametrize("fn", ALL)
def test_nan_inf_names_points(fn):
    m = nn.Linear(4, 3).to(D)
    x = torch.randn(5, 4, dtype=D)
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf at point\(s\) 1, 3; remove or replace"):
        fn(m, x)


def test_nan_many_points_truncated():
    x = torch.full((15, 2), float("nan"), dtype=D)
    with pytest.raises(ValueError, match=r"0, 1, .*9 and 5 more"):
        fg.logvol(nn.Linear(2, 2).to(D), x)


@pytest.mark.parametrize("fn", ALL)
def test_shape_the_model_rejects(fn):
    m = nn.Sequential(nn.Linear(5, 3), nn.Tanh()).to(D)
    with pytest.raises(ValueError, match=r"rejected points of shape \(4,\).*\(B, \*input_shape\)"):
        fn(m, torch.randn(2, 4, dtype=D))
    with pytest.raises(ValueError, match=r"batch dimension.*x\[None\]"):
        fn(m, torch.randn(5, dtype=D))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_dtype(dtype):
    with pytest.raises(TypeError, match=rf"dtype {dtype}.*floating-point.*x.float\(\)"):
        fg.logvol(nn.Linear(3, 2), torch.zeros(2, 3, dtype=dtype))


def test_not_a_tensor_and_complex():
    with pytest.raises(TypeError, match="torch.Tensor"):
        fg.logvol(nn.Linear(3, 2), [[0.0, 1.0, 2.0]])
    with pytest.raises(TypeError, match="real inputs"):
        fg.logvol(nn.Linear(3, 2), torch.zeros(2, 3, dtype=torch.complex64))


@pytest.mark.parametrize("fn", ALL)
def test_unknown_layer_lists_close_matches(fn, net):
    x = torch.randn(2, 1, 7, 7, dtype=D)
    with pytest.raises(KeyError, match=r"unknown layer 'block.conv3'.*Did you mean: 'block.conv2', 'block.conv1'"):
        fn(net, x, "block.conv3")
    with pytest.raises(KeyError, match=r"Did you mean: 'block.conv2'"):
        fn(net, x, "blok.conv2")
    with pytest.raises(KeyError, match=r"named_modules\(\)"):
        fn(net, x, "zzzzzz")


def test_layer_output_not_a_tensor(net):
    with pytest.raises(TypeError, match=r"layer 'rnn' is a tuple, not a Tensor"):
        fg.logvol(net, torch.randn(2, 1, 7, 7, dtype=D), "rnn")


def test_layer_not_reached(net):
    with pytest.raises(ValueError, match=r"'unused' was not reached.*forward pass"):
        fg.logvol(net, torch.randn(2, 1, 7, 7, dtype=D), "unused")


@pytest.mark.parametrize("fn", [fg.logvol, fg.spectrum, fg.jacobian])
def test_unknown_method(fn):
    with pytest.raises(ValueError, match=r"unknown method 'svd'; choose one of 'auto', 'dense', 'streamed'"):
        fn(nn.Linear(3, 2).to(D), torch.randn(2, 3, dtype=D), method="svd")


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, dtype=D))

    def forward(self, x):
        return self.w.expand(x.shape[0], 3) + 0 * x.detach().sum()


@pytest.mark.parametrize("method", ["dense", "streamed"])
def test_output_independent_of_input(method):
    with pytest.raises(ValueError, match=r"does not depend on the input.*exactly zero at every point"):
        fg.logvol(Constant(), torch.randn(2, 4, dtype=D), method=method)
    with pytest.raises(ValueError, match=r"at layer .*does not depend on the input"):
        fg.spectrum(None, torch.randn(2, 4, dtype=D), lambda z: z.detach()[:, :2] * 2, method=method)


def test_other_argument_checks(net):
    lin = nn.Linear(3, 2).to(D)
    x3 = torch.randn(2, 3, dtype=D)
    with pytest.raises(TypeError, match="nn.Module"):
        fg.logvol(lambda z: z, x3)
    with pytest.raises(TypeError, match="callable feature map"):
        fg.logvol(None, x3)
    with pytest.raises(TypeError, match="layer must be None, a module name"):
        fg.logvol(lin, x3, layer=3)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        fg.logvol(lin, x3, dtype=torch.int32)
    with pytest.raises(ValueError, match="rank_tol must be a float in"):
        fg.logvol(lin, x3, rank_tol=2.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fg.logvol(lin, x3, method="streamed", chunk_size=0)
    with pytest.raises(ValueError, match="k must be a positive int"):
        fg.spectrum(lin, x3, k=0)
    with pytest.raises(ValueError, match="unknown backend 'fortran'"):
        fg.logvol(lin, x3, backend="fortran")


def test_pool_errors(net):
    x = torch.randn(2, 1, 9, 9, dtype=D)  # block.conv2: (2, 5, 5)
    with pytest.raises(ValueError, match=r"pool=7 is not a multiple of the 2 channels"):
        fg.logvol(net, x, "block.conv2", pool=7)
    with pytest.raises(ValueError, match=r"no non-overlapping window.*pass a kernel tuple"):
        fg.logvol(net, x, "block.conv2", pool=6)
    with pytest.raises(ValueError, match=r"does not tile the 5x5"):
        fg.logvol(net, x, "block.conv2", pool=(2, 2))
    with pytest.raises(ValueError, match=r"pool needs a \(C, H, W\) feature map"):
        fg.logvol(nn.Linear(3, 2).to(D), torch.randn(2, 3, dtype=D), pool=2)
    with pytest.raises(TypeError, match="pool must be None, a target size"):
        fg.logvol(net, x, "block.conv2", pool=2.5)
    with pytest.raises(ValueError, match="pool dict must be"):
        fg.logvol(net, x, "block.conv2", pool={"stride": 2})
