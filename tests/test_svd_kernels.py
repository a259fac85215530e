"""Compiled one-sided Jacobi SVD (fastgeom.ops.svd; csrc/ops/jacobi.cpp, CUDA twin on GPU) against the
torch reference and mpmath: odd sizes, graded columns (1e-30..1), rank-deficient, zero and NaN input;
dispatch rules."""

import mpmath
import pytest
import torch

from fastgeom import linalg
from fastgeom._ext import ext
from fastgeom.ops import svd
from fastgeom.ops.svd import reference as ref

D = torch.float64
needs_cpp = pytest.mark.skipif(not ext.has_op("jacobi_svdvals"), reason="fastgeom._C not built here (make ext)")


def _graded(B, p, q, lo, seed):
    """X = Q diag(logspace(0, lo)) V^T-free: random columns scaled over |lo| decades (column-graded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, p, q, generator=g, dtype=D) * torch.logspace(0, lo, q, dtype=D)


def _mp_svdvals(X, dps=60):
    with mpmath.workdps(dps):
        s = mpmath.svd_r(mpmath.matrix(X.tolist()), compute_uv=False)
        return torch.tensor(sorted((float(v) for v in s), reverse=True), dtype=D)


@needs_cpp
@pytest.mark.parametrize("shape", [(3, 7, 5), (1, 9, 1), (2, 5, 2), (2, 11, 7), (1, 4, 3), (2, 13, 13), (1, 33, 17)])
def test_cpp_matches_reference_odd_sizes(shape):
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=D)
    torch.testing.assert_close(svd.jacobi_svdvals(X, backend="cpp"), ref.jacobi_svdvals(X), rtol=1e-13, atol=0)


@needs_cpp
@pytest.mark.parametrize("q", [6, 9, 16])
def test_cpp_graded_columns_keep_relative_accuracy(q):
    """Columns spanning 1e-30..1 (the R^T of a pivoted QR of a graded J): every value, the tiniest included,
    to relative accuracy against the reference and against a 60-digit SVD."""
    X = _graded(2, q + 3, q, -30, seed=q)
    s = svd.jacobi_svdvals(X, backend="cpp")
    torch.testing.assert_close(s, ref.jacobi_svdvals(X), rtol=1e-12, atol=0)
    for b in range(2):
        torch.testing.assert_close(s[b], _mp_svdvals(X[b]), rtol=1e-12, atol=0)


@needs_cpp
def test_cpp_small_cases_vs_mpmath():
    g = torch.Generator().manual_seed(11)
    for p, q in [(2, 2), (3, 2), (5, 3), (4, 4)]:
        X = torch.randn(1, p, q, generator=g, dtype=D)
        torch.testing.assert_close(svd.jacobi_svdvals(X, backend="cpp")[0], _mp_svdvals(X[0]), rtol=1e-13, atol=0)


@needs_cpp
def test_cpp_rank_deficient_zero_and_nan():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 9, 3, generator=g, dtype=D)
    X = torch.cat([A, A @ torch.randn(3, 4, generator=g, dtype=D)], dim=-1)  # rank 3 of 7 columns
    s, r = svd.jacobi_svdvals(X, backend="cpp"), ref.jacobi_svdvals(X)
    torch.testing.assert_close(s[:, :3], r[:, :3], rtol=1e-13, atol=0)
    assert (s[:, 3:] <= 1e-14 * s[:, :1]).all() and (r[:, 3:] <= 1e-14 * r[:, :1]).all()
    X0 = torch.zeros(1, 4, 3, dtype=D)
    X0[0, :, 1] = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=D)
    assert svd.jacobi_svdvals(X0, backend="cpp").tolist() == [[5.0, 0.0, 0.0]]
    assert svd.jacobi_svdvals(torch.zeros(0, 3, 2, dtype=D), backend="cpp").shape == (0, 2)
    Xn = torch.randn(1, 4, 3, generator=g, dtype=D)
    Xn[0, 1, 2] = float("nan")
    assert torch.isnan(svd.jacobi_svdvals(Xn, backend="cpp")).any()  # NaN in, NaN out: never a clean number


@needs_cpp
def test_spectrum_from_factor_graded_jacobian_matches_reference_path():
    """The spectrum path (pivoted QR, second QR, compiled Jacobi) against the unpreconditioned reference."""
    g = torch.Generator().manual_seed(8)
    J = torch.randn(3, 40, 17, generator=g, dtype=D) * torch.logspace(0, -30, 17, dtype=D)
    J = J * torch.logspace(0, -6, 40, dtype=D)[:, None]
    f = linalg.factor(J)
    s = linalg.spectrum_from_factor(f, 17)
    r = torch.stack([ref.jacobi_svdvals(c.mT[None])[0] for c in f.cores])
    torch.testing.assert_close(s, r, rtol=1e-12, atol=0)
    torch.testing.assert_close(s, linalg.spectrum_from_factor(f, 17, backend="torch"), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.log(s).sum(-1), f.logvol, rtol=1e-13, atol=0)


def test_dispatch_rules():
    X = torch.randn(1, 3, 2, dtype=D)
    assert svd.pick("torch", X.device) == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        svd.jacobi_svdvals(X, backend="fortran")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            svd.jacobi_svdvals(X, backend="cuda")
    if ext.has_op("jacobi_svdvals"):
        assert svd.pick("auto", X.device) == "cpp"
    with pytest.raises(ValueError, match=r"\(B, p, q\)"):
        svd.jacobi_svdvals(X[0])


@pytest.mark.gpu
def test_cuda_matches_reference():
    for shape, lo in [((3, 7, 5), 0), ((2, 40, 33), -30), ((1, 130, 64), -12)]:
        X = _graded(*shape, lo, seed=shape[2])
        s = svd.jacobi_svdvals(X.cuda(), backend="cuda").cpu()
        torch.testing.assert_close(s, ref.jacobi_svdvals(X), rtol=1e-12, atol=0)


@pytest.mark.parametrize("q, lo", [(7, 0), (19, -8), (23, -14), (13, -30), (31, -30)])
def test_warm_start_certified_or_cold_both_match_mpmath(q, lo):
    """spectrum_from_factor's warm start (sweeps from X V0, V0 LAPACK's right singular vectors) is taken
    only where its a-posteriori bound certifies it; either way every value, the tiniest included, agrees
    with a 60-digit SVD to relative accuracy, and the warm and cold sweeps agree with each other."""
    X = torch.linalg.qr(_graded(3, q + 4, q, lo, seed=q), mode="r").R.mT  # what spectrum_from_factor sweeps
    Y, ok = linalg.warm_start(X)
    if lo == 0:
        assert ok.all()  # well-conditioned: always warm
    s_warm, s_cold = linalg.jacobi_svdvals(Y), linalg.jacobi_svdvals(X)
    for b in range(3):
        mp = _mp_svdvals(X[b])
        torch.testing.assert_close(s_cold[b], mp, rtol=1e-12, atol=0)
        if ok[b]:
            torch.testing.assert_close(s_warm[b], mp, rtol=1e-12, atol=0)


def test_warm_start_refuses_what_it_cannot_certify():
    X = _graded(2, 9, 6, 0, seed=3)
    X[1, 2, 4] = float("nan")
    _, ok = linalg.warm_start(X)
    assert ok.tolist() == [True, False]  # non-finite input starts cold (and comes out NaN there)
    assert not linalg.warm_start(X[:1], rtol=1e-30)[1].any()  # a bound no rounding can meet: cold
    assert not linalg.warm_start(X[:1, :5, :])[1].any()  # wide (p < q): cold
    Xz = X[:1].clone()
    Xz[0, :, 3] = 0.0  # a zero column: Y has a zero column, no column-relative bound
    assert not linalg.warm_start(Xz)[1].any()


@pytest.mark.gpu
def test_warm_started_spectrum_on_cuda_matches_cpu():
    """The certified warm start (cuSOLVER's V0, the bound, the CUDA sweeps) against the CPU path."""
    for lo in (0, -8, -30):
        J = _graded(2, 45, 31, lo, seed=31 - lo)
        f_cpu = linalg.factor(J)
        f_gpu = linalg.factor(J.cuda())
        s_cpu = linalg.spectrum_from_factor(f_cpu, 31)
        s_gpu = linalg.spectrum_from_factor(f_gpu, 31).cpu()
        torch.testing.assert_close(s_gpu, s_cpu, rtol=1e-12, atol=0)
