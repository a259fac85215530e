"""Torch reference (the spec) for the compiled one-sided Jacobi SVD (csrc/ops/jacobi.cpp, csrc/cuda/jacobi.cu)."""

from __future__ import annotations

import torch

from ..logdet.reference import _scaled_norm


def round_robin(q: int) -> list[tuple[list[int], list[int]]]:
    """Tournament schedule: q-1 rounds of q/2 disjoint pairs covering all pairs (q even)."""
    players = list(range(q))
    rounds = []
    for _ in range(q - 1):
        top, bot = players[: q // 2], players[q // 2 :][::-1]
        rounds.append((top, bot))
        players = [players[0]] + [players[-1]] + players[1:-1]
    return rounds


def jacobi_svdvals(X: torch.Tensor, max_sweeps: int = 60) -> torch.Tensor:
    """Singular values (descending) of X (B, p, q) by one-sided Hestenes Jacobi on its columns, float64.

    Pair (i, j) is rotated while |x_i . x_j| > max(p, q) eps ||x_i|| ||x_j||; the sweeps (round-robin
    ordering, vectorised over the batch and the q/2 disjoint pairs of a round) stop after one without
    a rotation. Relative accuracy is governed by the condition of X with its columns scaled to unit
    norm (Demmel & Veselic 1992), so call it on R^T of a pivoted QR (column-graded) for graded matrices.
    """
    X = X.to(torch.float64).clone()
    B, p, q = X.shape
    if q == 0 or B == 0:
        return X.new_zeros(B, q)
    if q == 1:
        return torch.linalg.vector_norm(X, dim=1)
    odd = q % 2 == 1
    if odd:
        X = torch.cat([X, X.new_zeros(B, p, 1)], dim=-1)
    qq = X.shape[-1]
    eps = torch.finfo(torch.float64).eps
    tol = eps * max(p, qq)
    sched = [(torch.tensor(t, device=X.device), torch.tensor(b, device=X.device)) for t, b in round_robin(qq)]
    for _ in range(max_sweeps):
        rotated = False
        for top, bot in sched:
            xp, xq = X[:, :, top], X[:, :, bot]
            alpha = (xp * xp).sum(1)
            beta = (xq * xq).sum(1)
            gamma = (xp * xq).sum(1)
            act = gamma.abs() > tol * torch.sqrt(alpha * beta)
            if not bool(act.any()):
                continue
            rotated = True
            g = torch.where(act, gamma, torch.ones_like(gamma))
            zeta = (beta - alpha) / (2 * g)
            t = torch.sign(zeta) / (zeta.abs() + torch.sqrt(1 + zeta * zeta))
            t = torch.where(zeta == 0, torch.ones_like(t), t)
            c = 1 / torch.sqrt(1 + t * t)
            s = c * t
            c = torch.where(act, c, torch.ones_like(c))[:, None, :]
            s = torch.where(act, s, torch.zeros_like(s))[:, None, :]
            X[:, :, top] = c * xp - s * xq
            X[:, :, bot] = s * xp + c * xq
        if not rotated:
            break
    sv = _scaled_norm(X, dim=1)
    if odd:
        sv = torch.sort(sv, dim=-1, descending=True).values[:, :q]
    return torch.sort(sv, dim=-1, descending=True).values
