"""The MNIST drivers' geometry route and statistics (experiments/_mnist_geometry.py, _mnist_stats.py)
against references: the general engine / fastgeom.shallow, sklearn's AUROC, and brute force."""

import math
import warnings

import numpy as np
import pytest
import torch

import fastgeom as fg
from experiments import _mnist_geometry as geo
from experiments import _mnist_stats as st
from fastgeom.train import MLPClassifier


def _net(n, d, scale=1.0, seed=0):
    torch.manual_seed(seed)
    net = MLPClassifier(d, n, 10).double()
    with torch.no_grad():
        net.lin1.weight.mul_(scale)
        net.lin1.bias.mul_(scale)
    return net


@pytest.mark.parametrize("n,d", [(37, 53), (53, 53), (71, 53)])  # submersion, square, immersion
def test_logvol_route_matches_general_engine(n, d):
    net = _net(n, d)
    x = torch.rand(7, d, dtype=torch.float64)
    ref = fg.logvol(net, x, layer="act", normalize=True, method="dense", progress=False)
    assert geo.route(net) == ("factorised" if n <= d else "shallow-qr")
    assert torch.allclose(geo.logvol(net, x), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [41, 53])
def test_factorised_route_at_saturated_units(n):
    # |z| up to a few hundred: sigma' ~ e^-|z|; the general engine (saturation-stable derivatives,
    # engine/stable.py) and fastgeom.shallow's QR of diag(sigma(z) sigma(-z)) W are both references
    d = 53
    net = _net(n, d, scale=300.0, seed=1)
    x = torch.rand(6, d, dtype=torch.float64)
    z = x @ net.lin1.weight.detach().T + net.lin1.bias.detach()
    assert float(z.abs().max()) > 200
    got = geo.logvol(net, x)
    assert torch.isfinite(got).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fg.PrecisionWarning)  # the saturated units' rounding-level values, kept
        ref = fg.logvol(net, x, layer="act", normalize=True, method="dense", progress=False)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-9)
    ref = fg.shallow.log_volume_element(net.lin1.weight.detach(), net.lin1.bias.detach(), x, "sigmoid")
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-9)


def test_rank_deficient_weights_fall_back_with_warning():
    net = _net(12, 20)
    with torch.no_grad():
        net.lin1.weight[1] = net.lin1.weight[0]  # rank 11 < n = 12
    x = torch.rand(3, 20, dtype=torch.float64)
    with pytest.warns(UserWarning, match="rank-deficient"):
        got = geo.logvol(net, x)
    ref = fg.shallow.log_volume_element(net.lin1.weight.detach(), net.lin1.bias.detach(), x, "sigmoid")
    assert torch.equal(got, ref)


def test_metric_eigenvalues_match_engine_spectrum_and_volume():
    net = _net(30, 23)
    x = torch.rand(4, 23, dtype=torch.float64)
    lam = geo.metric_eigenvalues(net, x)
    s = fg.spectrum(net, x, layer="act", normalize=True, method="dense", progress=False)
    assert torch.allclose(lam, s**2, rtol=1e-9, atol=0)
    assert torch.allclose(0.5 * lam.log().sum(1), geo.logvol(net, x), atol=1e-9)


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for neg_n, pos_n in [(1, 1), (7, 13), (200, 31)]:
        neg = rng.integers(0, 6, neg_n).astype(float)  # many ties
        pos = rng.integers(2, 8, pos_n).astype(float)
        want = roc_auc_score(np.r_[np.zeros(neg_n), np.ones(pos_n)], np.r_[neg, pos])
        assert st.auroc(neg, pos) == pytest.approx(want, abs=1e-12)
    assert st.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and st.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert math.isnan(st.auroc([], [1.0]))
    with pytest.raises(ValueError, match="NaN"):
        st.auroc([np.nan], [1.0])


def test_boundary_mask_brute_force():
    rng = np.random.default_rng(1)
    n = 9
    cls = rng.integers(0, 3, n * n)
    keep = np.sort(rng.choice(n * n, 50, replace=False))  # a convex-hull-like subset of the grid
    m = st.boundary_mask(cls[keep], keep, n)
    kept = set(keep.tolist())
    for j, i in enumerate(keep):
        r, c = divmod(int(i), n)
        nb = [
            (r + dr) * n + c + dc
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= r + dr < n and 0 <= c + dc < n
        ]
        assert m[j] == any(k in kept and cls[k] != cls[i] for k in nb)
    v = np.where(st.boundary_mask(cls, np.arange(n * n), n), 1.0, 0.0)
    b = st.boundary_stats(v, cls, np.arange(n * n), n)
    assert b["excess"] == 1.0 and b["auroc"] == 1.0
    assert math.isnan(st.boundary_stats(v, np.zeros(n * n), np.arange(n * n), n)["excess"])


def test_spectrum_stats():
    s = st.spectrum_stats([4.0, 1.0, 1.0, 1.0, 0.0])
    assert s["log10_top"] == pytest.approx(math.log10(4)) and s["log10_median"] == 0.0
    assert s["log10vol"] == pytest.approx(0.5 * math.log10(4))
    assert st.spectrum_stats([2.0] * 5)["effective_rank"] == pytest.approx(5.0)


def test_pearson():
    assert st.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])
    assert math.isnan(st.pearson([1, 1, 1], [1, 2, 3]))
