"""Batch coupling the first-points probe (checks.batch_coupled on 3 points) cannot see: coupling only in
batches of more than 4 points, or only at the 4th point on. Every exact engine, method="randomized" and the
curvature routes check one point of each batch alone against the batch (checks.batch_feature_coupled),
recompute point by point and warn."""

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


# ---------------------------------------------------------------- method="randomized" and the curvature routes
def _coupling_warnings(w):
    return [str(m.message) for m in w if issubclass(m.category, BatchCouplingWarning)]


RANDOM_OPTS = dict(probes=4, steps=4)


@pytest.mark.parametrize("model_cls", [BigBatchMean, LateRows])
def test_randomized_logvol_finds_coupling_beyond_the_probe(model_cls):
    model = model_cls()
    x = torch.randn(11, 4, dtype=D64, generator=torch.Generator().manual_seed(2))
    geo = fg.Geometry(model, method="randomized")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        val, err = geo.logvol(x, seed=7, progress=False, return_stderr=True, options=RANDOM_OPTS)
    found = _coupling_warnings(w)
    assert len(found) == 1 and "point 10" in found[0] and "points 0..10" in found[0]
    assert all(m.filename == __file__ for m in w if issubclass(m.category, BatchCouplingWarning))
    assert geo.probe(x).coupled
    # the same call (same seed, so the same probes) one point per batch: each point alone
    opts1 = dict(RANDOM_OPTS, points_per_batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        val1, err1 = fg.logvol(model, x, method="randomized", seed=7, progress=False, return_stderr=True, options=opts1)
        # the handle now knows: the next call runs point by point without another warning
        assert torch.equal(geo.logvol(x, seed=7, progress=False, options=RANDOM_OPTS), val)
    assert torch.allclose(val, val1, rtol=0, atol=1e-12) and torch.allclose(err, err1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model_cls", [BigBatchMean, LateRows])
def test_randomized_spectrum_finds_coupling_beyond_the_probe(model_cls):
    model = model_cls()
    x = torch.randn(9, 4, dtype=D64, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = fg.spectrum(model, x, k=3, method="randomized", seed=5, progress=False)
    found = _coupling_warnings(w)
    assert len(found) == 1 and "point 8" in found[0] and "points 0..8" in found[0]
    # b = min(n, k + oversample) = n = 4: the block spans everything, so the values are exact; each point alone
    exact = torch.cat([fg.spectrum(model, x[i : i + 1], method="dense", progress=False) for i in range(9)])[:, :3]
    assert torch.allclose(s, exact, rtol=0, atol=1e-12)
    alone = torch.cat(
        [fg.spectrum(model, x[i : i + 1], k=3, method="randomized", seed=5, progress=False) for i in range(9)]
    )
    assert torch.allclose(s, alone, rtol=0, atol=1e-12)


def _bn_model():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 6)).double().eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    return model


def test_randomized_independent_points_give_no_warning():
    model = _bn_model()
    x = torch.randn(13, 4, dtype=D64, generator=torch.Generator().manual_seed(6))
    geo = fg.Geometry(model, method="randomized")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        val = geo.logvol(x, seed=1, progress=False, options=RANDOM_OPTS)
        fg.spectrum(model, x, k=2, method="randomized", seed=1, progress=False)
    assert not geo.probe(x).coupled
    val1 = fg.logvol(
        model, x, method="randomized", seed=1, progress=False, options=dict(RANDOM_OPTS, points_per_batch=1)
    )
    assert torch.allclose(val, val1, rtol=0, atol=1e-12)


def _curvatures_alone(model, x, u, v):
    K = torch.cat([fg.gaussian_curvature(model, x[i : i + 1], u, v, progress=False) for i in range(x.shape[0])])
    R = torch.cat([fg.scalar_curvature(model, x[i : i + 1], progress=False) for i in range(x.shape[0])])
    return K, R


@pytest.mark.parametrize("what", ["gaussian", "scalar"])
@pytest.mark.parametrize("model_cls", [BigBatchMean, LateRows])
def test_curvature_finds_coupling_beyond_the_probe(model_cls, what):
    """Gaussian curvature runs the nested pair route, the scalar curvature the shared-first-order one."""
    model = model_cls()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(11, 4, dtype=D64, generator=g)
    u, v = torch.randn(4, dtype=D64, generator=g), torch.randn(4, dtype=D64, generator=g)
    geo = fg.Geometry(model)
    call = (
        (lambda: geo.gaussian_curvature(x, u, v, progress=False))
        if what == "gaussian"
        else (lambda: geo.scalar_curvature(x, progress=False))
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = call()
    found = _coupling_warnings(w)
    assert len(found) == 1 and "point 10" in found[0] and "points 0..10" in found[0]
    assert geo.probe(x).coupled
    K1, R1 = _curvatures_alone(model, x, u, v)
    assert torch.allclose(out, K1 if what == "gaussian" else R1, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        assert torch.equal(call(), out)  # the handle now knows: point by point, no second warning
        lv = geo.logvol(x, progress=False)  # and so does the exact engine built after it
    assert torch.allclose(lv, _alone(model, x, "auto"), rtol=0, atol=1e-12)


def test_curvature_jet_route_finds_coupling():
    """LateRows traces: from JET_MIN_POINTS points a handle takes the jet pass, whose features are checked too."""
    model = LateRows()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(70, 4, dtype=D64, generator=g)
    u, v = torch.randn(4, dtype=D64, generator=g), torch.randn(4, dtype=D64, generator=g)
    geo = fg.Geometry(model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        K = geo.gaussian_curvature(x, u, v, progress=False)
        R = geo.scalar_curvature(x, progress=False)
    assert geo._jets[geo._key(x)]  # the jet pass ran
    found = _coupling_warnings(w)
    assert len(found) == 1 and "point 69" in found[0] and "points 0..69" in found[0]
    K1, R1 = _curvatures_alone(model, x, u, v)
    assert torch.allclose(K, K1, rtol=1e-10, atol=1e-10) and torch.allclose(R, R1, rtol=1e-10, atol=1e-10)


def test_curvature_independent_points_give_no_warning():
    model = _bn_model()
    g = torch.Generator().manual_seed(10)
    x = torch.randn(70, 4, dtype=D64, generator=g)
    u, v = torch.randn(4, dtype=D64, generator=g), torch.randn(4, dtype=D64, generator=g)
    geo = fg.Geometry(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        K = geo.gaussian_curvature(x[:9], u, v, progress=False)  # nested pairs
        R = geo.scalar_curvature(x[:9], progress=False)  # shared first order
        geo.gaussian_curvature(x, u, v, progress=False)  # jet
    assert geo._jets[geo._key(x)] and not geo.probe(x).coupled
    K1, R1 = _curvatures_alone(model, x[:9], u, v)
    assert torch.allclose(K, K1, rtol=1e-12, atol=1e-12) and torch.allclose(R, R1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("route", ["randomized", "curvature"])
def test_the_check_costs_one_single_point_forward_per_batch_randomized_and_curvature(route):
    torch.manual_seed(5)
    calls = []
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    x = torch.randn(40, 6, dtype=D64)
    u, v = torch.eye(6, dtype=D64)[:2]
    geo = fg.Geometry(net, method="randomized")
    opts = dict(probes=2, steps=3, points_per_batch=8)  # 5 batches

    def run():
        if route == "randomized":
            geo.logvol(x, seed=0, progress=False, options=opts)
        else:
            from fastgeom import surfaces

            surfaces.gaussian_curvature_fmap(geo.fmap, x, u, v, progress=False, max_points=8, jet=False)

    run()  # probe, pass factory
    net[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    run()
    # the five checks; the curvature call's own d_out and planner forwards are two more and its passes batches
    # of 8 (the randomized passes are the linearised engine's replay, which calls no module hooks)
    assert calls.count(1) == 5 + 2 * (route == "curvature")
    assert calls.count(8) == (5 if route == "curvature" else 0)
