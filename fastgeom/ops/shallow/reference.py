"""Torch float64 reference for shallow-network geometry (the spec; MATH.md section 3).

Phi(x) = sigma(x W^T + b) / sqrt(n) with W (n, d), b (n,), x (N, d). All functions take an
:class:`~fastgeom.activations.Activation`, work in float64 and process points in tiles so that at
most about ``TILE_ELEMS`` float64 numbers are materialised at once.

* metric:  g = W^T diag(s^2) W / n,  s = sigma'(z)                                       (MATH 3.1)
* logvol:  sum_i log s_i(diag(s) W / sqrt n) by pivoted Householder QR (fastgeom.linalg.factor),
           never a log-det of g (that squares the condition number)                    (MATH 2.2-2.3)
* ricci:   Gram form R = (1/n^2) sum_jk P_j P_k G_jk (G_jk^2 - G_jj G_kk),  G = W g^-1 W^T,
           P = sigma' sigma'', with g^-1 applied through the QR factor R of diag(s) W / sqrt n (MATH 3.5)
* ricci_2d: explicit 2-D closed form (MATH 3.6), ricci_3units: n = 3, d = 2 (MATH 3.7).
"""

from __future__ import annotations

import math

import torch

TILE_ELEMS = 1 << 22  # ~32 MB of float64 per tile


def _tiles(N: int, per_point: int):
    t = max(1, min(N, TILE_ELEMS // max(1, per_point)))
    for i in range(0, N, t):
        yield slice(i, min(N, i + t))


def preact(W, b, x):
    """z = x W^T + b, (N, n)."""
    return torch.addmm(b, x, W.T)


def metric(W, b, x, act):
    """(N, d, d) pullback metric g = W^T diag(sigma'(z)^2) W / n."""
    n, d = W.shape
    out = torch.empty(x.shape[0], d, d, dtype=W.dtype, device=W.device)
    for sl in _tiles(x.shape[0], n * d):
        s = act.d1(preact(W, b, x[sl]))
        A = s[:, :, None] * W  # (t, n, d)
        out[sl] = A.mT @ A / n
    return out


def log_volume_element(W, b, x, act):
    """(N,) log of the (pseudo-)volume element: sum of log singular values of diag(s) W / sqrt(n)."""
    from ...linalg import factor

    n, d = W.shape
    out = torch.empty(x.shape[0], dtype=W.dtype, device=W.device)
    for sl in _tiles(x.shape[0], 2 * n * d):
        s = act.d1(preact(W, b, x[sl]))
        # rank_tol=0.0: every non-zero value; saturated units make J row-graded, and their tiny values are real
        out[sl] = factor(s[:, :, None] * W / math.sqrt(n), rank_tol=0.0).logvol
    return out


def _whitened(W, b, x, act):
    """U = W R^-1 with diag(s) W / sqrt(n) = Q R, so G = U U^T = W g^-1 W^T; and P = s s'.

    Returns U (t, n, d) (NaN where g is singular or a unit's P underflows) and P (t, n)."""
    n, d = W.shape
    z = preact(W, b, x)
    s, s2 = act.d1(z), act.d2(z)
    if n < d:  # g is singular everywhere: no curvature
        return torch.full((x.shape[0], n, d), float("nan"), dtype=W.dtype, device=W.device), s * s2
    R = torch.linalg.qr(s[:, :, None] * W / math.sqrt(n), mode="r").R  # (t, d, d)
    sing = (torch.diagonal(R, dim1=-2, dim2=-1) == 0).any(-1)
    # sigma' sigma'' underflowed while neither factor is 0 (sigma' < ~1e-154): that unit's term is lost
    sing |= ((s * s2).abs() < torch.finfo(W.dtype).tiny).logical_and(s != 0).logical_and(s2 != 0).any(-1)
    R = torch.where(sing[:, None, None], torch.full_like(R, float("nan")), R)
    eye = torch.eye(d, dtype=R.dtype, device=R.device).expand_as(R)
    Rinv = torch.linalg.solve_triangular(R, eye, upper=True)  # (t, d, d), tiny
    return torch.matmul(W, Rinv), s * s2  # U = W R^-1, (t, n, d)


def ricci_scalar(W, b, x, act):
    """(N,) true Ricci scalar by the Gram form (MATH 3.5); NaN where g is singular (e.g. n < d)."""
    n, d = W.shape
    out = torch.empty(x.shape[0], dtype=W.dtype, device=W.device)
    for sl in _tiles(x.shape[0], 3 * n * n + 2 * n * d):
        U, P = _whitened(W, b, x[sl], act)
        G = U @ U.mT  # (t, n, n)
        Gd = torch.diagonal(G, dim1=-2, dim2=-1)
        br = G * (G * G - Gd[:, :, None] * Gd[:, None, :])
        out[sl] = torch.einsum("tj,tjk,tk->t", P, br, P) / (n * n)
    return out


def ricci_scalar_moments(W, b, x, act):
    """(N,) the same Ricci scalar by whitened third moments, O(n d^3) per point instead of O(n^2 d):
    with u_j = R^-T w_j (so G_jk = u_j . u_k), T = sum_j P_j u_j^(x3), v = sum_j P_j |u_j|^2 u_j,
    R = (|T|^2 - |v|^2) / n^2 (expanding the Gram form). This is the algorithm of the fused kernels."""
    n, d = W.shape
    out = torch.empty(x.shape[0], dtype=W.dtype, device=W.device)
    for sl in _tiles(x.shape[0], 3 * n * d + d**3):
        U, P = _whitened(W, b, x[sl], act)
        PU = P[:, :, None] * U
        UU = (U[:, :, :, None] * U[:, :, None, :]).reshape(U.shape[0], n, d * d)
        T = PU.mT @ UU  # (t, d, d*d)
        v = (PU * (U * U).sum(-1, keepdim=True)).sum(1)
        out[sl] = ((T * T).sum((1, 2)) - (v * v).sum(-1)) / (n * n)
    return out


def ricci_scalar_auto(W, b, x, act):
    """Gram form while it is cheaper (n <= 4 d^2), else the moment form (large n, small d)."""
    n, d = W.shape
    return ricci_scalar(W, b, x, act) if n <= 4 * d * d else ricci_scalar_moments(W, b, x, act)


def _m2d(W):
    """m_jk = W_j1 W_k2 - W_j2 W_k1 (n, n)."""
    return W[:, 0:1] * W[None, :, 1] - W[:, 1:2] * W[None, :, 0]


def det_2d(W, b, x, act):
    """(N,) det g for d = 2 by the minors sum (MATH 3.3)."""
    n = W.shape[0]
    a = act.d1(preact(W, b, x)) ** 2
    m2 = _m2d(W) ** 2
    return torch.einsum("tj,jk,tk->t", a, m2, a) / (2 * n * n)


def ricci_2d(W, b, x, act):
    """(N,) Ricci scalar for d = 2 by the explicit O(n^3) form (MATH 3.6)."""
    n, d = W.shape
    M = _m2d(W)
    Q = M * M
    out = torch.empty(x.shape[0], dtype=W.dtype, device=W.device)
    for sl in _tiles(x.shape[0], 2 * n * n):
        z = preact(W, b, x[sl])
        s = act.d1(z)
        a, P = s * s, s * act.d2(z)
        V = P[:, None, :] * M[None]  # V[t, i, j] = P_j m_ij
        T = torch.einsum("tij,jk,tik->ti", V, Q, V)
        det = torch.einsum("tj,jk,tk->t", a, Q, a) / (2 * n * n)
        out[sl] = -(a * T).sum(-1) / (n**3 * det * det)
    return out


def ricci_3units(W, b, x, act):
    """(N,) Ricci scalar for d = 2, n = 3 by the explicit form (MATH 3.7)."""
    z = preact(W, b, x)
    s = act.d1(z)
    a, P = s * s, s * act.d2(z)
    M = _m2d(W)
    m12, m13, m23 = M[0, 1], M[0, 2], M[1, 2]
    a1, a2, a3 = a.unbind(-1)
    P1, P2, P3 = P.unbind(-1)
    num = m23 * a1 * P2 * P3 - m13 * a2 * P1 * P3 + m12 * a3 * P1 * P2
    den = a1 * a2 * m12**2 + a1 * a3 * m13**2 + a2 * a3 * m23**2
    return -6 * m12 * m13 * m23 * num / (den * den)
