"""Accuracy of the float64 factorisation (fastgeom.linalg) on graded Jacobians against a 300-digit
mpmath reference, rank-deficiency handling and warnings, and the Jacobi SVD."""

from __future__ import annotations

import math
import warnings

import mpmath
import pytest
import torch
from fg_oracle import brute_jacobian, brute_logvol, mp_logvol, rel_err
from torch import nn

import fastgeom as fg
from fastgeom import linalg

D = torch.float64


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits (ships with the package), scaled to [0, 1]: (1797, 64) float64."""
    datasets = pytest.importorskip("sklearn.datasets")
    return torch.tensor(datasets.load_digits().data, dtype=D) / 16


def sigmoid_layer(W, b):
    lin = nn.Linear(W.shape[1], W.shape[0]).to(D)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return nn.Sequential(lin, nn.Sigmoid())


# ---------------------------------------------------------------- graded Jacobians vs mpmath


def test_column_graded_dead_pixels(digits):
    """Pixels that are zero in every digit get first-layer weights ~1e-45 (weight decay): J has columns
    ~1e-46. svdvals loses them (its error is normwise); the pivoted-QR log volume does not."""
    dead = (digits.abs().sum(0) == 0).nonzero().flatten()
    assert len(dead) >= 3
    live = digits.var(0).argsort(descending=True)[: 24 - len(dead)]
    pix = torch.cat([dead, live])  # d = 24 inputs, 3 of them dead
    x = digits[:3][:, pix]
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 24, generator=g, dtype=D) * 0.4  # hidden n = 32 > d: immersion
    W[:, : len(dead)] *= 1e-45
    m = sigmoid_layer(W, torch.randn(32, generator=g, dtype=D) * 0.1)
    J = fg.jacobian(m, x)
    ref = torch.tensor([mp_logvol(J[i]) for i in range(3)], dtype=D)
    lv, diag = fg.logvol(m, x, return_diagnostics=True)
    assert rel_err(lv, ref) < 1e-12
    assert float(diag.cond_est.min()) > 1e40  # the grading is really there
    svd = torch.log(torch.linalg.svdvals(J)).sum(-1)
    assert float((svd - ref).abs().min()) > 10.0  # a plain SVD is tens of nats off
    # the spectrum (Jacobi SVD of R) keeps the tiny singular values to relative accuracy
    s = fg.spectrum(m, x)
    assert rel_err(torch.log(s).sum(-1), ref) < 1e-12
    assert float(s[:, -1].max()) < 1e-44


def test_row_graded_saturated_units(digits):
    """Half the hidden units saturated (preactivations 18..26): rows of J span ~10 decades. The Gram
    log-det 0.5 logdet(J^T J) squares the condition number and is off; pivoted QR is not."""
    d, n = 24, 40
    pix = digits.var(0).argsort(descending=True)[:d]
    x = digits[:3][:, pix]
    g = torch.Generator().manual_seed(2)
    W = torch.randn(n, d, generator=g, dtype=D) * 0.3
    b = torch.zeros(n, dtype=D)
    b[n // 2 :] = torch.linspace(18, 26, n - n // 2, dtype=D)
    m = sigmoid_layer(W, b)
    J = fg.jacobian(m, x)
    kappa = torch.linalg.cond(J)
    assert 1e8 < float(kappa.min()) and float(kappa.max()) < 1e11
    ref = torch.tensor([mp_logvol(J[i]) for i in range(3)], dtype=D)  # of the float64 J as computed
    lv = fg.logvol(m, x)
    assert rel_err(lv, ref) < 1e-12
    gram = 0.5 * torch.linalg.slogdet(J.mT @ J).logabsdet
    assert float((gram - ref).abs().max()) > 1e-3
    # end to end: J itself from mpmath (sigmoid' of saturated units loses ~1e-7 relative in float64)
    with mpmath.workdps(60):
        Wm = mpmath.matrix(W.tolist())
        e2e = []
        for i in range(3):
            z = Wm * mpmath.matrix(x[i].tolist())
            sp = [1 / (2 + mpmath.exp(z[j] + b[j].item()) + mpmath.exp(-z[j] - b[j].item())) for j in range(n)]
            A = mpmath.matrix([[sp[j] * Wm[j, k] for k in range(d)] for j in range(n)])
            e2e.append(float(mpmath.log(mpmath.det(A.T * A)) / 2))
    assert rel_err(lv, torch.tensor(e2e, dtype=D)) < 1e-7


def test_factor_graded_random_matrices_vs_mpmath():
    """Random (B, m, n) with rows and columns scaled over many decades, both orientations."""
    g = torch.Generator().manual_seed(3)
    for m_, n_ in [(13, 7), (7, 13), (9, 9)]:
        A = torch.randn(2, m_, n_, generator=g, dtype=D)
        A = A * torch.logspace(0, -30, n_, dtype=D) * torch.logspace(0, -8, m_, dtype=D)[:, None]
        A = A[:, torch.randperm(m_, generator=g)][:, :, torch.randperm(n_, generator=g)]
        f = linalg.factor(A)
        ref = torch.tensor([mp_logvol(A[i], dps=120) for i in range(2)], dtype=D)
        assert rel_err(f.logvol, ref) < 1e-12, (m_, n_)
        assert f.rank.tolist() == [min(m_, n_)] * 2


def test_dynamic_pivoting_when_static_order_is_not_rank_revealing():
    """Column norms sorted, yet the 2nd column is almost parallel to the 1st: the a-posteriori check
    must trigger dynamic column pivoting, and the value must still be right."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(8, generator=g, dtype=D)
    c = torch.randn(8, generator=g, dtype=D)
    A = torch.stack([3 * a, 3 * a + 1e-9 * c, 0.5 * torch.randn(8, generator=g, dtype=D)], dim=1)[None]
    f = linalg.factor(A)
    assert bool(f.dynamic_pivoting[0])
    # kappa(A) ~ 1e9 from a near-dependency (not a scaling): backward stability gives ~eps*kappa relative
    # error on the smallest singular value, about 1e-8 of this log volume; nothing in float64 does better.
    assert rel_err(f.logvol, torch.tensor([mp_logvol(A[0])], dtype=D)) < 1e-7
    assert abs(float(torch.log(torch.linalg.svdvals(A)).sum() - f.logvol)) < 1e-6


# ---------------------------------------------------------------- rank deficiency


def relu_mlp_with_dead_units(d_in, hidden, n_dead, d_out=None):
    """Linear -> ReLU (the last `n_dead` units have bias -1e3: exactly zero rows of J) [-> Linear]."""
    lin = nn.Linear(d_in, hidden).to(D)
    with torch.no_grad():
        lin.bias[hidden - n_dead :] = -1e3
    layers = [lin, nn.ReLU()] + ([nn.Linear(hidden, d_out).to(D)] if d_out else [])
    return nn.Sequential(*layers)


def test_dead_units_zero_rows_removed_and_reported():
    m = relu_mlp_with_dead_units(5, 9, 6)  # immersion with 3 live units: rank 3 < 5
    x = torch.randn(4, 5, dtype=D) * 0.01  # near 0: live units with |bias| > 0.1 are certainly active
    with torch.no_grad():
        m[0].bias[:3] = torch.tensor([1.0, 0.7, 0.5])
    J = brute_jacobian(m, x)
    assert int((J.abs().sum(-1) == 0).sum()) == 4 * 6
    with pytest.warns(fg.RankDeficiencyWarning, match=r"4 point\(s\).*0 \(rank 3\), 1 \(rank 3\)"):
        lv, diag = fg.logvol(m, x, return_diagnostics=True)
    assert diag.rank.tolist() == [3] * 4 and diag.rank_structural.tolist() == [3] * 4
    assert diag.full_rank == 5
    assert rel_err(lv, brute_logvol(J, rank=3)) < 1e-12
    # the plain SVD log-sum over min(d_in, d_out) includes rounding-level values and is meaningless
    assert float((brute_logvol(J) - lv).abs().min()) > 10
    with pytest.warns(fg.RankDeficiencyWarning):
        s = fg.spectrum(m, x)
    assert torch.all(s[:, 3:] == 0) and torch.allclose(s[:, :3], torch.linalg.svdvals(J)[:, :3], rtol=1e-12)


def test_zero_columns_removed():
    lin = nn.Linear(8, 5).to(D)
    with torch.no_grad():
        lin.weight[:, [1, 3, 4, 6]] = 0  # outputs independent of 4 of the 8 inputs
    m = nn.Sequential(lin, nn.Tanh())
    x = torch.randn(3, 8, dtype=D)
    J = brute_jacobian(m, x)
    with pytest.warns(fg.RankDeficiencyWarning, match=r"rank 4"):
        lv, diag = fg.logvol(m, x, return_diagnostics=True, method="dense")
    assert diag.rank.tolist() == [4] * 3
    assert rel_err(lv, brute_logvol(J, rank=4)) < 1e-12


def test_mixed_ranks_in_one_batch_name_only_deficient_points():
    lin = nn.Linear(3, 6).to(D)
    with torch.no_grad():
        lin.weight.copy_(torch.cat([torch.eye(3), torch.eye(3)], 0).to(D))
        lin.bias.copy_(torch.tensor([0.0, 0, 0, -10, -10, -10], dtype=D))
    m = nn.Sequential(lin, nn.ReLU())  # unit i and i+3 alive iff x_i > 0 (resp. > 10)
    x = torch.tensor([[1.0, 2, 3], [-1, 2, 3], [1, 2, 3], [-1, -2, 3], [1, 20, 3]], dtype=D)
    with pytest.warns(fg.RankDeficiencyWarning) as rec:
        lv, diag = fg.logvol(m, x, return_diagnostics=True)
    assert diag.rank.tolist() == [3, 2, 3, 1, 3]
    msg = str([w for w in rec if w.category is fg.RankDeficiencyWarning][0].message)
    assert "2 point(s)" in msg and "1 (rank 2), 3 (rank 1)" in msg and "0 (rank" not in msg
    J = brute_jacobian(m, x)
    ref = torch.stack([brute_logvol(J[i : i + 1], rank=r)[0] for i, r in enumerate([3, 2, 3, 1, 3])])
    assert rel_err(lv, ref) < 1e-12
    assert torch.allclose(lv[[0, 2, 3]], torch.zeros(3, dtype=D))  # unit-norm rows
    assert abs(float(lv[4]) - 0.5 * math.log(2.0)) < 1e-14  # x_2 > 10: two rows


def test_rounding_level_values_warn_and_rank_tol_drops_them():
    """phi = [f, f_0 + f_1] has a numerically (not structurally) dependent row."""
    m = nn.Sequential(nn.Linear(6, 4), nn.Tanh()).to(D)
    feat = lambda z: torch.cat([m(z), m(z)[:, :1] + m(z)[:, 1:2]], 1)  # noqa: E731  (5 outputs, rank 4)
    x = torch.randn(3, 6, dtype=D)
    J = brute_jacobian(feat, x)
    # default: the rounding-level value is dropped (resolved rank), counted and named
    with pytest.warns(
        fg.RankDeficiencyWarning, match=r"3 point\(s\).*rank 4.*rounding level of torch.float64.*dropped"
    ):
        lvd, diagd = fg.logvol(None, x, feat, return_diagnostics=True)
    assert diagd.n_dropped.tolist() == [1, 1, 1] and diagd.rank.tolist() == [4] * 3
    assert rel_err(lvd, brute_logvol(J, rank=4)) < 1e-12
    # rank_tol=0.0 keeps it and flags it
    with pytest.warns(fg.PrecisionWarning, match=r"3 point\(s\).*rounding level.*0 \(count 1\)"):
        lv, diag = fg.logvol(None, x, feat, rank_tol=0.0, return_diagnostics=True)
    assert diag.n_rounding.tolist() == [1, 1, 1] and diag.rank.tolist() == [5] * 3
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        lv2, diag2 = fg.logvol(None, x, feat, rank_tol=1e-10, return_diagnostics=True)
    kinds = {type(w.message) for w in rec}
    assert fg.RankDeficiencyWarning in kinds and fg.PrecisionWarning not in kinds
    assert diag2.rank.tolist() == [4] * 3 and diag2.n_rounding.tolist() == [0] * 3
    assert rel_err(lv2, brute_logvol(J, rank=4)) < 1e-12  # log pseudo-determinant of the rank-4 part
    assert float((lv - lv2).abs().min()) > 10  # keeping the rounding-level value is way off


def test_rank_tol_pseudo_determinant_of_kept_part():
    """J = U diag(3, 0.5, 1e-9) V^T (7x5, rank 3 up to rounding). rank_tol=1e-6 keeps two values and
    gives log 3 + log 0.5: the pseudo-determinant of the kept rows [R11 R12] (complete orthogonal
    decomposition), not |det R11|. Without rank_tol the two rounding-level values are kept and flagged."""
    g = torch.Generator().manual_seed(5)
    U = torch.linalg.qr(torch.randn(2, 7, 3, generator=g, dtype=D)).Q
    V = torch.linalg.qr(torch.randn(2, 5, 3, generator=g, dtype=D)).Q
    J = U @ torch.diag(torch.tensor([3.0, 0.5, 1e-9], dtype=D)) @ V.mT
    f = linalg.factor(J, rank_tol=1e-6)
    assert f.rank.tolist() == [2, 2]
    log = lambda v: float(torch.log(torch.tensor(v, dtype=D)))  # noqa: E731
    assert torch.allclose(f.logvol, torch.full((2,), log(1.5), dtype=D), rtol=0, atol=1e-12)
    R11 = [torch.diagonal(c).abs().log().sum() for c in f.cores]
    assert all(c.shape == (2, 2) for c in f.cores) and torch.allclose(torch.stack(R11), f.logvol)
    f3 = linalg.factor(J, rank_tol=1e-12)
    assert f3.rank.tolist() == [3, 3]
    assert torch.allclose(f3.logvol, torch.full((2,), log(1.5e-9), dtype=D), rtol=1e-7, atol=0)
    f0 = linalg.factor(J, rank_tol=0.0)
    assert f0.rank.tolist() == [5, 5]
    # the two noise values are at rounding level by the documented criterion (|R_ii| <= max(m, n) eps
    # ||pivot column||); the noise of forming J in float64 may put one of them just above it
    assert all(1 <= c <= 2 for c in f0.n_rounding.tolist())
    # the default drops the trailing run of them (the resolved rank) and keeps the real 1e-9
    # (after dynamic pivoting both noise values are trailing and at rounding level)
    fd = linalg.factor(J)
    assert fd.rank.tolist() == [3, 3] and fd.n_dropped.tolist() == [2, 2] and fd.n_rounding.tolist() == [0, 0]
    assert torch.allclose(fd.logvol, torch.full((2,), log(1.5e-9), dtype=D), rtol=1e-7, atol=0)


def test_full_rank_gives_no_warning():
    m = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).to(D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lv, diag = fg.logvol(m, torch.randn(3, 4, dtype=D), return_diagnostics=True)
    assert diag.rank.tolist() == [3] * 3 and diag.n_rounding.tolist() == [0] * 3
    assert torch.all(diag.cond_est >= 1) and torch.all(torch.isfinite(diag.cond_est))


# ---------------------------------------------------------------- Jacobi SVD


@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 6, 6), (1, 9, 1), (2, 5, 2), (2, 11, 7), (1, 4, 3)])
def test_jacobi_svdvals_vs_svdvals(shape):
    g = torch.Generator().manual_seed(6)
    X = torch.randn(*shape, generator=g, dtype=D)
    s = linalg.jacobi_svdvals(X)
    assert s.shape == (shape[0], shape[2])
    assert torch.allclose(s, torch.linalg.svdvals(X)[:, : shape[2]], rtol=1e-13, atol=0)
    # column-graded: relative accuracy of the smallest values (vs the exact values of the construction)
    Q = torch.linalg.qr(torch.randn(shape[0], shape[1], shape[2], generator=g, dtype=D)).Q
    sv = torch.logspace(0, -40, shape[2], dtype=D)
    Xg = Q * sv  # orthogonal columns scaled: singular values are exactly sv up to rounding of Q
    sg = linalg.jacobi_svdvals(Xg)
    assert torch.allclose(sg, sv.expand_as(sg), rtol=1e-13, atol=0)


def test_jacobi_svdvals_noncontiguous_and_empty():
    X = torch.randn(2, 8, 10, dtype=D)[:, ::2, 1::2]  # (2, 4, 5) non-contiguous
    assert torch.allclose(linalg.jacobi_svdvals(X)[:, :4], torch.linalg.svdvals(X), rtol=1e-13)
    assert linalg.jacobi_svdvals(torch.zeros(0, 3, 2, dtype=D)).shape == (0, 2)


def test_resolved_rank_keeps_real_tiny_values_of_graded_jacobians_and_drops_structural_zeros():
    """Row-graded (saturated units: rows of 1e-30) and column-graded (dead pixels: columns of 1e-40)
    Jacobians have real tiny singular values: the default keeps them (same as rank_tol=0.0). A
    dependence that holds in exact arithmetic (a row that is the sum of two others) is dropped even
    when the rows are graded too."""
    g = torch.Generator().manual_seed(11)
    W = torch.randn(3, 9, 6, generator=g, dtype=D)
    rows = torch.logspace(0, -30, 9, dtype=D)
    cols = torch.logspace(0, -40, 6, dtype=D)
    for J in (rows[:, None] * W, W * cols[None, :], rows[:, None] * W * cols[None, :]):
        fd, f0 = linalg.factor(J), linalg.factor(J, rank_tol=0.0)
        assert fd.n_dropped.tolist() == [0, 0, 0] and fd.rank.tolist() == [6, 6, 6]
        torch.testing.assert_close(fd.logvol, f0.logvol, rtol=1e-13, atol=0)
    # a structural zero: the last row is the sum of the first two (rows graded by 1e-3 too)
    A = torch.randn(3, 5, 7, generator=g, dtype=D) * torch.logspace(0, -12, 5, dtype=D)[:, None]
    Js = torch.cat([A, A[:, :1] + A[:, 1:2]], 1)  # (3, 6, 7): rank 5
    fs = linalg.factor(Js)
    assert fs.rank.tolist() == [5, 5, 5] and fs.n_dropped.tolist() == [1, 1, 1]
    # Js = M A with M = [I; e1 + e2]: pdet(Js) = sqrt(det(M^T M)) pdet(A) = sqrt(3) pdet(A)
    ref = torch.tensor([0.5 * math.log(3.0) + mp_logvol(A[i]) for i in range(3)], dtype=D)
    torch.testing.assert_close(fs.logvol, ref, rtol=1e-9, atol=0)
