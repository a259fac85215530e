"""Float64 linear algebra for log volume elements of (graded) Jacobians.

The log volume element of J (B, m, n) is sum_i log s_i(J) over its non-zero singular values.
Trained networks give *graded* Jacobians (columns or rows spanning dozens of decades), so we never
take an SVD of J or a log-det of J^T J. Instead (``factor``):

1. A = J, or J^T when m < n, so A is tall (M >= N); float64.
2. Exactly-zero rows and columns are removed (dead units / dead inputs: the paper's definition of
   the volume of a singular metric keeps only the non-zero singular values).
3. Rows are sorted by decreasing inf-norm, columns by decreasing 2-norm (static pivoting), and a
   Householder QR (LAPACK/cuSOLVER) gives R. Householder QR is column-scaling invariant, and
   row sorting with pivoting makes it row-wise stable (Cox & Higham 1998).
4. A posteriori check of the rank-revealing property of column pivoting:
   |R_kk| >= max_{j>k} ||R[k:, j]|| / PIVOT_SLACK. Points that fail it, that have an exactly
   zero |R_kk|, or for which the user gave ``rank_tol`` are refactored with dynamic column
   pivoting (``ops.logdet.qrcp``; compiled when available).
5. logvol = sum_{i<k} log|R_ii|; when k < N values are dropped (exact zeros or rank_tol), the kept
   rows [R11 R12] are reduced by a second QR (complete orthogonal decomposition) so that the result
   is the log pseudo-determinant of the rank-k part, not |det R11|.

Spectra come from a one-sided (Hestenes) Jacobi SVD of R^T (column-graded after pivoting), which
keeps relative accuracy on graded matrices (Demmel & Veselic 1992), preconditioned by a second QR
(``spectrum_from_factor``); the sweeps run in the compiled ``ops.svd`` kernel (C++ / CUDA), with the
vectorised torch reference (round-robin ordering) as fallback and spec. The sweeps are warm-started
from LAPACK's right singular vectors V0 (Y = X V0, columns nearly orthogonal, so one or two sweeps
instead of about ten) only where an a-posteriori bound certifies that the rounding of the product
moves no singular value by more than ``WARM_START_RTOL`` relative (``warm_start``); elsewhere (strongly
graded or non-finite cores) the sweeps start cold from X.

Rounding level: |R_ii| <= max(M, N) * eps(dtype J was computed in) * ||a_{p(i)}||, i.e. the pivoted
column is dependent on the previous ones up to rounding (counted in ``n_rounding``; logvol warns that
such kept values may not be resolved).

Resolved rank (default ``rank_tol=None``): structurally rank-deficient Jacobians (late CNN layers at
small inputs, LayerNorm outputs, bottlenecks, attention tokens) have singular values that are zero in
exact arithmetic but sit at the rounding level. The deficiency is measured on A with its rows, then
its columns, scaled to unit norm (a pivoted QR of that equilibrated matrix: diagonal values <= max(M,
N) eps), which is invariant to row and column scaling and so does not count the real tiny values of
row-graded (saturated units) or column-graded (dead pixels) Jacobians. A deficient point is refactored
in the equilibrated pivot order (Householder QR is column-scaling invariant), and its trailing
deficiency-many values are dropped (``n_dropped``). ``rank_tol=0.0`` keeps every non-zero value;
``rank_tol=t > 0`` drops |R_ii| <= t |R_00|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ops import logdet as _ops
from .ops import svd as _svd

PIVOT_SLACK = 10.0
WARM_START_RTOL = 1e-10  # certified bound on the warm start's relative change of any singular value


@dataclass
class Factorization:
    """Per-point results of ``factor`` for a batch of B Jacobians (all tensors have leading dim B)."""

    logvol: torch.Tensor  # float64 (B,)
    rank: torch.Tensor  # int64 (B,): number of singular values kept
    rank_structural: torch.Tensor  # int64 (B,): min(#non-zero rows, #non-zero cols) of J
    n_rounding: torch.Tensor  # int64 (B,): kept values at the rounding level of the compute dtype
    n_dropped: torch.Tensor  # int64 (B,): values dropped at the rounding level (default rank_tol=None)
    cond_est: torch.Tensor  # float64 (B,): max|R_ii| / min|R_ii| over kept values (estimate of kappa)
    cores: list  # per point: (k, k) float64 triangular matrix with the kept singular values
    dynamic_pivoting: torch.Tensor  # bool (B,): point was refactored with dynamic column pivoting


def _sort_compact(A: torch.Tensor, nr: int, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort rows (inf-norm) and columns (2-norm) decreasingly and keep the nr x nc non-zero block."""
    rn = A.abs().amax(dim=-1)
    ri = torch.argsort(rn, dim=-1, descending=True, stable=True)[:, :nr]
    A = torch.gather(A, 1, ri[:, :, None].expand(-1, -1, A.shape[-1]))
    cn = _ops.reference._scaled_norm(A, dim=1)
    ci = torch.argsort(cn, dim=-1, descending=True, stable=True)[:, :nc]
    A = torch.gather(A, 2, ci[:, None, :].expand(-1, A.shape[1], -1))
    return A, torch.gather(cn, 1, ci)


def _pivot_violations(R: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the static pivot order is not rank revealing within PIVOT_SLACK."""
    R2 = R * R
    tail = torch.flip(torch.cumsum(torch.flip(R2, dims=[-2]), dim=-2), dims=[-2])  # sum_{i>=k} R_ij^2
    N = R.shape[-1]
    strict = torch.triu(torch.ones(N, N, dtype=torch.bool, device=R.device), diagonal=1)
    worst = torch.where(strict, tail, torch.zeros_like(tail)).amax(dim=-1)  # (B, N)
    d2 = torch.diagonal(R2, dim1=-2, dim2=-1)
    return (worst > (PIVOT_SLACK**2) * d2).any(dim=-1)


def _equilibrated_deficiency(A: torch.Tensor, tol: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerical rank deficiency of A (B, M, N) with rows, then columns, scaled to unit 2-norm: (count (B,)
    of pivoted-QR diagonal values <= tol, the pivot order (B, N)). Invariant to row and column scaling,
    so the real tiny singular values of row-graded (saturated units) or column-graded (dead pixels)
    Jacobians do not count, while a dependence that holds in exact arithmetic does; the order puts the
    dependent columns last."""
    As = A / _ops.reference._scaled_norm(A, dim=2)[:, :, None].clamp_min(torch.finfo(A.dtype).tiny)
    As = As / _ops.reference._scaled_norm(As, dim=1)[:, None, :].clamp_min(torch.finfo(A.dtype).tiny)
    Rs, perm = _ops.qrcp(As, backend=backend)
    ds = torch.diagonal(Rs, dim1=-2, dim2=-1).abs()
    return (ds <= tol).sum(-1), perm


def _tril_core(Rk: torch.Tensor) -> torch.Tensor:
    """Square triangular matrix with the singular values of the wide (k, N) matrix Rk."""
    if Rk.shape[0] == Rk.shape[1]:
        return Rk
    return torch.linalg.qr(Rk.mT, mode="r").R


def factor(
    J: torch.Tensor,
    compute_dtype: torch.dtype | None = None,
    rank_tol: float | None = None,
    backend: str = "auto",
    known_null: int = 0,
) -> Factorization:
    """Accurate log volume factorisation of J (B, m, n); see the module docstring for the algorithm.

    ``known_null``: number of singular values that are zero by construction (1 for the sphere
    pullback, whose Jacobian has no radial component); the smallest that many are dropped.
    ``rank_tol``: None drops the trailing rounding-level values, 0.0 keeps every non-zero value,
    t > 0 drops values below t times the largest.
    """
    if rank_tol is not None and (
        isinstance(rank_tol, bool) or not isinstance(rank_tol, (int, float)) or not 0 <= rank_tol < 1
    ):
        raise ValueError(
            f"rank_tol must be a float in [0, 1) relative to the largest singular value (0.0 keeps "
            f"every non-zero value) or None (drop values at the rounding level), got {rank_tol!r}"
        )
    if J.dim() != 3:
        raise ValueError(f"J must be (B, m, n), got shape {tuple(J.shape)}")
    compute_dtype = compute_dtype or J.dtype
    eps = torch.finfo(compute_dtype).eps if compute_dtype.is_floating_point else torch.finfo(torch.float64).eps
    B, m, n = J.shape
    A = J.to(torch.float64)
    if m < n:
        A = A.mT
    dev = A.device
    nz = A != 0
    nr_all = nz.any(dim=-1).sum(-1)
    nc_all = nz.any(dim=-2).sum(-1)
    logvol = torch.zeros(B, dtype=torch.float64, device=dev)
    rank = torch.zeros(B, dtype=torch.long, device=dev)
    n_round = torch.zeros(B, dtype=torch.long, device=dev)
    n_drop = torch.zeros(B, dtype=torch.long, device=dev)
    cond = torch.full((B,), float("nan"), dtype=torch.float64, device=dev)
    dyn = torch.zeros(B, dtype=torch.bool, device=dev)
    cores: list = [None] * B
    pairs = torch.stack([nr_all, nc_all], dim=1)
    for nr, nc in torch.unique(pairs, dim=0).tolist():
        idx = ((nr_all == nr) & (nc_all == nc)).nonzero().flatten()
        if nr == 0 or nc == 0:
            for b in idx.tolist():
                cores[b] = torch.zeros(0, 0, dtype=torch.float64, device=dev)
            continue
        Ag, cn = _sort_compact(A[idx], nr, nc)
        if nr < nc:  # more non-zero columns than rows: factor the transpose (tall again)
            Ag = Ag.mT
            cn = _ops.reference._scaled_norm(Ag, dim=1)
        N = Ag.shape[-1]
        R = torch.linalg.qr(Ag, mode="r").R
        d = torch.diagonal(R, dim1=-2, dim2=-1).abs()
        tol = max(Ag.shape[-2], N) * eps
        redo = _pivot_violations(R) | (d == 0).any(dim=-1)
        if rank_tol or known_null:
            redo[:] = True
        if redo.any():
            ridx = redo.nonzero().flatten()
            Rd, perm = _ops.qrcp(Ag[ridx], backend=backend)
            R = R.clone()
            R[ridx] = Rd[:, :N, :]
            cn = cn.clone()
            cn[ridx] = torch.gather(cn[ridx], 1, perm)
            d = torch.diagonal(R, dim1=-2, dim2=-1).abs()
        defic = torch.zeros(Ag.shape[0], dtype=torch.long, device=dev)
        if rank_tol is None:  # resolved rank: refactor deficient points in the equilibrated pivot order
            defic, perm_s = _equilibrated_deficiency(Ag, tol, backend)
            sel = (defic > 0).nonzero().flatten()
            if sel.numel():
                Ap = torch.gather(Ag[sel], 2, perm_s[sel][:, None, :].expand(-1, Ag.shape[1], -1))
                R = R.clone()
                R[sel] = torch.linalg.qr(Ap, mode="r").R[:, :N, :]
                cn = cn.clone()
                cn[sel] = _ops.reference._scaled_norm(Ap, dim=1)
                d = torch.diagonal(R, dim1=-2, dim2=-1).abs()
                redo = redo.clone()
                redo[sel] = True
        scaled = d / torch.where(cn > 0, cn, torch.ones_like(cn))
        rounding = scaled <= tol
        keep = d > 0
        if rank_tol:
            keep &= d > rank_tol * d[:, :1]
        if known_null:
            keep &= torch.arange(N, device=dev)[None, :] < max(min(Ag.shape[-2], N) - known_null, 0)
        if rank_tol is None:  # the trailing `defic` values of the equilibrated order
            pos = torch.arange(N, device=dev)[None, :]
            n_drop[idx] = (keep & (pos >= N - defic[:, None])).sum(-1)
            keep &= pos < N - defic[:, None]
        # with dynamic pivoting, dropped values are trailing; k = number kept
        k = keep.sum(-1)
        lv = _ops.logdiag_sum(R, k, backend=backend)
        for j, b in enumerate(idx.tolist()):
            kb = int(k[j])
            Rk = R[j, :kb, :]
            core = _tril_core(Rk)
            cores[b] = core
            if kb < N and kb > 0:
                lv[j] = torch.log(torch.diagonal(core).abs()).sum()
        logvol[idx] = lv
        rank[idx] = k
        n_round[idx] = (rounding & keep).sum(-1)
        dk = torch.where(keep, d, torch.full_like(d, float("nan")))
        cond[idx] = torch.nan_to_num(dk, nan=-1.0).amax(-1) / torch.nan_to_num(dk, nan=float("inf")).amin(-1)
        dyn[idx] = redo
    return Factorization(
        logvol=logvol,
        rank=rank,
        rank_structural=torch.minimum(nr_all, nc_all),
        n_rounding=n_round,
        n_dropped=n_drop,
        cond_est=cond,
        cores=cores,
        dynamic_pivoting=dyn,
    )


def jacobi_svdvals(X: torch.Tensor, max_sweeps: int = 60, backend: str = "auto") -> torch.Tensor:
    """Singular values (descending) of X (B, p, q) by one-sided Hestenes Jacobi on its columns, float64.

    Relative accuracy is governed by the condition of X with its columns scaled to unit norm, so
    call it on R^T of a pivoted QR (column-graded) for graded matrices. Runs the compiled kernel
    (``ops.svd``; csrc/ops/jacobi.cpp, csrc/cuda/jacobi.cu) when built, else the torch reference.
    """
    return _svd.jacobi_svdvals(X, max_sweeps, backend=backend)


def spectrum_from_factor(f: Factorization, r: int, backend: str = "auto") -> torch.Tensor:
    """(B, r) singular values, descending; entries beyond each point's rank are exactly 0.

    Per core R (k, k): X = R^T is column-graded; its Householder QR X = Q2 R2 (column-wise backward
    stable, so the grading is kept) gives R2^T, nearer diagonal, on which the Jacobi sweeps converge
    in fewer sweeps (the preconditioning of LAPACK's gejsv, Drmac & Veselic 2008)."""
    B = len(f.cores)
    dev = f.logvol.device
    out = torch.zeros(B, r, dtype=torch.float64, device=dev)
    by_k: dict[int, list[int]] = {}
    for b, c in enumerate(f.cores):
        by_k.setdefault(c.shape[0], []).append(b)
    for k, bs in by_k.items():
        if k == 0:
            continue
        X = torch.stack([f.cores[b] for b in bs]).mT  # R^T: column-graded
        if k > 1:
            X = torch.linalg.qr(X, mode="r").R.mT
        Y, warm = warm_start(X)
        s = torch.empty(len(bs), k, dtype=torch.float64, device=dev)
        if bool(warm.any()):
            s[warm] = jacobi_svdvals(Y[warm], backend=backend)
        if not bool(warm.all()):
            s[~warm] = jacobi_svdvals(X[~warm], backend=backend)
        out[bs, :k] = s[:, :r]
    return out


def warm_start(X: torch.Tensor, rtol: float = WARM_START_RTOL) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y (B, p, q), ok (B,) bool): Y = fl(X V0) with V0 LAPACK's right singular vectors of X (B, p, q)
    float64, p >= q, and whether the Jacobi sweeps may start from Y instead of X.

    V0 is orthogonal, so sigma(X V0) = sigma(X); the question is only the rounding of the product,
    fl(X V0) = X V0 + E with ||E_j|| <= gamma_q || |X| |v_j| || (any summation order). Written as a
    column-relative perturbation of Y = B D (D its column norms), E = dB D with
    ||dB||_2 <= eta = (sum_j (gamma_q || |X| |v_j| || / ||y_j||)^2)^(1/2), and by Demmel & Veselic
    (1992, Thm. 2.14) every singular value of Y is within eta / sigma_min(B) relative of X's, with
    sigma_min(B)^2 >= 1 - ||B^T B - I||_F; V0's own departure from orthogonality adds ||V0^T V0 - I||
    (a multiplicative perturbation). ``ok`` = that bound is <= rtol (and ||B^T B - I||_F <= 1/2,
    all finite). The sweeps on Y then keep relative accuracy (B is near orthonormal) and converge in a
    sweep or two. Strongly graded X fail the test (LAPACK's V0 is only normwise accurate, so the tiny
    columns of Y are not near orthogonal) and start cold."""
    B, p, q = X.shape
    ok = torch.isfinite(X).flatten(1).all(1)
    if q < 2 or p < q or not bool(ok.any()):
        return X, torch.zeros_like(ok)
    Xf = torch.where(ok[:, None, None], X, torch.zeros((), dtype=X.dtype, device=X.device))
    try:
        V = torch.linalg.svd(Xf, full_matrices=False).Vh.mT  # (B, q, q)
    except RuntimeError:  # LAPACK did not converge: every point starts cold
        return X, torch.zeros_like(ok)
    Y = Xf @ V
    eps = torch.finfo(torch.float64).eps
    gamma = q * eps / (1 - q * eps)
    ny = torch.linalg.vector_norm(Y, dim=1)  # (B, q)
    bound = gamma * torch.linalg.vector_norm(Xf.abs() @ V.abs(), dim=1)
    eta = torch.linalg.vector_norm(bound / ny, dim=1)  # inf where a column of Y is 0
    Bn = Y / ny.clamp_min(torch.finfo(torch.float64).tiny)[:, None, :]
    eye = torch.eye(q, dtype=X.dtype, device=X.device)
    off = torch.linalg.matrix_norm(Bn.mT @ Bn - eye)
    orth = torch.linalg.matrix_norm(V.mT @ V - eye)  # V0 is orthogonal only to rounding: sigma(X V0) moves by <= orth
    rho = eta / (1 - off).clamp_min(0.5).sqrt() + orth
    ok = ok & (off <= 0.5) & (rho <= rtol) & (ny > 0).all(1)
    return Y, ok
