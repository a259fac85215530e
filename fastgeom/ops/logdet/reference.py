"""Torch references (the spec) for the compiled ops in csrc/ops/qrcp.cpp and csrc/ops/logdiag.cpp."""

from __future__ import annotations

import torch


def logdiag_sum(R: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_{i < k[b]} log|R[b, i, i]|, accumulated in float64. R: (B, p, q), k: (B,)."""
    d = torch.diagonal(R.to(torch.float64), dim1=-2, dim2=-1).abs()
    idx = torch.arange(d.shape[-1], device=d.device)
    keep = idx[None, :] < k.to(d.device)[:, None]
    return torch.where(keep, torch.log(torch.where(keep, d, torch.ones_like(d))), torch.zeros_like(d)).sum(-1)


def _scaled_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """2-norm that neither under- nor overflows for graded entries (scale by the max first)."""
    s = x.abs().amax(dim=dim, keepdim=True)
    s1 = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.linalg.vector_norm(x / s1, dim=dim, keepdim=True) * s).squeeze(dim)


def qrcp(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Householder QR with column pivoting (geqp3 semantics), float64, batched; columns are
    re-normed at every step (no downdating), so it is slow but simple. Returns (R, perm) with
    A[..., perm] = Q R, R (B, min(m, n), n), |R_ii| non-increasing."""
    A = A.to(torch.float64).clone()
    B, m, n = A.shape
    kmax = min(m, n)
    perm = torch.arange(n, device=A.device).repeat(B, 1)
    bidx = torch.arange(B, device=A.device)
    for k in range(kmax):
        norms = _scaled_norm(A[:, k:, k:], dim=1)  # (B, n-k)
        p = norms.argmax(dim=1) + k
        # swap columns k and p
        ck, cp = A[bidx, :, k].clone(), A[bidx, :, p].clone()
        A[bidx, :, k], A[bidx, :, p] = cp, ck
        pk, pp = perm[bidx, k].clone(), perm[bidx, p].clone()
        perm[bidx, k], perm[bidx, p] = pp, pk
        x = A[:, k:, k]  # (B, m-k)
        alpha = x[:, 0]
        xnorm = _scaled_norm(x[:, 1:], dim=1) if m - k > 1 else torch.zeros_like(alpha)
        nz = xnorm != 0
        beta = torch.where(nz, -torch.copysign(torch.hypot(alpha, xnorm), alpha), alpha)
        safe_beta = torch.where(nz, beta, torch.ones_like(beta))
        tau = torch.where(nz, (beta - alpha) / safe_beta, torch.zeros_like(beta))
        denom = torch.where(nz, alpha - beta, torch.ones_like(beta))
        v = x / denom[:, None]
        v[:, 0] = 1.0
        v = torch.where(nz[:, None], v, torch.zeros_like(v))
        # apply H = I - tau v v^T to the trailing columns
        trail = A[:, k:, k + 1 :]
        w = tau[:, None] * torch.einsum("bi,bij->bj", v, trail)
        A[:, k:, k + 1 :] = trail - v[:, :, None] * w[:, None, :]
        A[:, k, k] = beta
        A[:, k + 1 :, k] = 0.0
    return torch.triu(A[:, :kmax, :]), perm
