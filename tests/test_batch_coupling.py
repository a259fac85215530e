"""Batch coupling the first-points probe (checks.batch_coupled on 3 points) cannot see: coupling only in
batches of more than 4 points, or only at the 4th point on. Every exact engine checks one point of each
batch alone against the batch (checks.batch_feature_coupled), recomputes point by point and warns."""

import time
import warnings

import pytest
import torch
from torch import nn

import fastgeom as fg
from fastgeom.checks import BatchCouplingWarning

D64 = torch.float64


class BigBatchMean(nn.Module):
    """Subtracts the batch mean only when the batch has more than 4 points (untraceable control flow)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 6).double()

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return h - h.mean(0, keepdim=True) if x.shape[0] > 4 else h


class LateRows(nn.Module):
    """Points 4, 5, ... of a batch get 0.1 x the first point's feature added (traceable: a mask, no branch)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(4, 6).double()

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        mask = (torch.arange(x.shape[0], device=x.device) >= 3).to(h.dtype)[:, None]
        return h + 0.1 * mask * h[:1]


def _alone(model, x, method):
    return torch.cat([fg.logvol(model, x[i : i + 1], method=method, progress=False) for i in range(x.shape[0])])


CASES = [(BigBatchMean, m) for m in ("dense", "streamed", "auto")] + [
    (LateRows, m) for m in ("dense", "streamed", "linearized", "auto")
]


@pytest.mark.parametrize("model_cls,method", CASES, ids=[f"{c.__name__}-{m}" for c, m in CASES])
def test_coupling_beyond_the_probe_is_found_and_computed_point_by_point(model_cls, method):
    model = model_cls()
    x = torch.randn(11, 4, dtype=D64, generator=torch.Generator().manual_seed(2))
    geo = fg.Geometry(model, method=method)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lv, diag = geo.logvol(x, progress=False, return_diagnostics=True)
    found = [str(m.message) for m in w if issubclass(m.category, BatchCouplingWarning)]
    assert len(found) == 1 and "point 10" in found[0] and "points 0..10" in found[0]
    assert diag.points_per_batch == 1 and any("batch coupling" in e for e in diag.events)
    assert torch.allclose(lv, _alone(model, x, method), rtol=0, atol=1e-12)
    # the handle now knows: later calls run point by point without another warning, and so does jacobian()
    assert geo.probe(x).coupled
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        assert torch.equal(geo.logvol(x, progress=False), lv)
        J = geo.jacobian(x[:6], progress=False)
    J1 = torch.cat([fg.jacobian(model, x[i : i + 1], method=method, progress=False) for i in range(6)])
    assert torch.allclose(J, J1, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["dense", "streamed"])
def test_jacobian_of_coupled_batches(method):
    model = BigBatchMean()
    x = torch.randn(7, 4, dtype=D64, generator=torch.Generator().manual_seed(3))
    with pytest.warns(BatchCouplingWarning, match="point 6"):
        J = fg.jacobian(model, x, method=method, progress=False)
    J1 = torch.cat([fg.jacobian(model, x[i : i + 1], method=method, progress=False) for i in range(7)])
    assert torch.allclose(J, J1, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["dense", "streamed", "linearized", "auto"])
def test_independent_points_give_no_warning(method):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(13, 5, dtype=D64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        lv, diag = fg.logvol(model, x, method=method, progress=False, return_diagnostics=True)
    assert diag.points_per_batch == 13 and not any("coupling" in e for e in diag.events)
    assert torch.allclose(lv, _alone(model, x, method), rtol=0, atol=1e-12)


def test_the_check_costs_one_single_point_forward_per_batch():
    """Counted, not timed: one forward of one point per batch of more than one point."""
    torch.manual_seed(5)
    calls = []
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    net[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(40, 6, dtype=D64)
    geo = fg.Geometry(net, method="streamed")
    geo.logvol(x[:2], progress=False)  # probe and engine built
    eng = geo.engine(x)
    eng.points = 8  # 5 batches
    calls.clear()
    t0 = time.process_time()
    geo.logvol(x, progress=False)
    assert time.process_time() - t0 < 60
    assert calls.count(1) == 5  # the five checks; the batch passes are batches of 8
    assert calls.count(8) >= 5
