"""Triton ``qrcp``: batched Householder QR with column pivoting (LAPACK geqp3 semantics), float64.

One program per matrix works in place on a float64 row-major copy of A (B, m, n) in global memory,
tile by tile (``BLOCK_M`` rows x ``BLOCK_N`` columns), so any size fits and no step goes back to the
host: the pivot search, column swap, Householder vector and trailing update of every column all run
inside the kernel. Like ``reference.qrcp`` (the spec), the trailing column norms are recomputed at
every step (no downdating; the recomputation is fused into the trailing update's pass), with
scaling, so graded columns (entries ~1e-250) neither under- nor overflow. Ties in the pivot search
go to the lowest column index, as ``torch.argmax`` in the reference.

Returns (R (B, min(m, n), n), perm (B, n)) with A[..., perm] = Q R and |R_ii| non-increasing.
Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ssq_update(scale, ssq, x):
    """Fold the tile x (BM, BN) into the per-column scaled sum of squares (scale, ssq) (BN,)."""
    t = tl.max(tl.abs(x), axis=0)
    t1 = tl.where(t > 0, t, 1.0)
    y = x / t1[None, :]
    tssq = tl.sum(y * y, axis=0)
    new = tl.maximum(scale, t)
    n1 = tl.where(new > 0, new, 1.0)
    r1 = scale / n1
    r2 = t / n1
    return new, ssq * r1 * r1 + tssq * r2 * r2


@triton.jit
def _qrcp_kernel(a_ptr, v_ptr, nrm_ptr, perm_ptr, m, n, kmax, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    a = a_ptr + pid * m * n  # row-major (m, n)
    v = v_ptr + pid * m  # Householder vector scratch (m,)
    nrm = nrm_ptr + pid * n  # trailing column norms (n,)
    perm = perm_ptr + pid * n
    rows0 = tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)

    # initial column norms over all rows, and perm = arange(n)
    for j0 in range(0, n, BLOCK_N):
        cols = j0 + cols0
        cm = cols < n
        scale = tl.zeros((BLOCK_N,), dtype=tl.float64)
        ssq = tl.zeros((BLOCK_N,), dtype=tl.float64)
        for i0 in range(0, m, BLOCK_M):
            rows = i0 + rows0
            msk = (rows[:, None] < m) & cm[None, :]
            x = tl.load(a + rows[:, None] * n + cols[None, :], mask=msk, other=0.0)
            scale, ssq = _ssq_update(scale, ssq, x)
        tl.store(nrm + cols, scale * tl.sqrt(ssq), mask=cm)
        tl.store(perm + cols, cols.to(tl.int64), mask=cm)
    tl.debug_barrier()

    for k in range(0, kmax):
        # pivot: the first column of largest trailing norm among k..n-1
        best = tl.load(nrm + k)
        p = k
        for j0 in range(k, n, BLOCK_N):
            cols = j0 + cols0
            cm = cols < n
            vals = tl.load(nrm + cols, mask=cm, other=-1.0)
            tmax = tl.max(vals, axis=0)
            targ = tl.argmax(vals, axis=0) + j0
            better = tmax > best
            p = tl.where(better, targ, p)
            best = tl.where(better, tmax, best)
        tl.debug_barrier()
        # swap columns k and p (all rows), their perm entries; norm of p takes k's
        for i0 in range(0, m, BLOCK_M):
            rows = i0 + rows0
            rm = rows < m
            ck = tl.load(a + rows * n + k, mask=rm, other=0.0)
            cp = tl.load(a + rows * n + p, mask=rm, other=0.0)
            tl.debug_barrier()
            tl.store(a + rows * n + k, cp, mask=rm)
            tl.store(a + rows * n + p, ck, mask=rm)
        pk = tl.load(perm + k)
        pp = tl.load(perm + p)
        nk = tl.load(nrm + k)
        tl.debug_barrier()
        tl.store(perm + k, pp)
        tl.store(perm + p, pk)
        tl.store(nrm + p, nk)
        tl.debug_barrier()
        # Householder reflector of column k, rows k..m-1: beta e1 = H x, H = I - tau v v^T, v[k] = 1
        alpha = tl.load(a + k * n + k)
        xs = tl.zeros((1,), dtype=tl.float64)
        xq = tl.zeros((1,), dtype=tl.float64)
        for i0 in range(k + 1, m, BLOCK_M):
            rows = i0 + rows0
            x = tl.load(a + rows * n + k, mask=rows < m, other=0.0)
            xs, xq = _ssq_update(xs, xq, x[:, None])
        xnorm = tl.sum(xs * tl.sqrt(xq), axis=0)
        nz = xnorm != 0
        aa = tl.abs(alpha)
        hi = tl.maximum(aa, xnorm)
        lo = tl.minimum(aa, xnorm)
        hi1 = tl.where(hi > 0, hi, 1.0)
        hyp = hi * tl.sqrt(1.0 + (lo / hi1) * (lo / hi1))
        beta = tl.where(nz, tl.where(alpha >= 0, -hyp, hyp), alpha)
        tau = tl.where(nz, (beta - alpha) / tl.where(nz, beta, 1.0), 0.0)
        sc = tl.where(nz, 1.0 / tl.where(nz, alpha - beta, 1.0), 0.0)
        tl.store(v + k, tl.where(nz, 1.0, 0.0).to(tl.float64))
        for i0 in range(k + 1, m, BLOCK_M):
            rows = i0 + rows0
            rm = rows < m
            x = tl.load(a + rows * n + k, mask=rm, other=0.0)
            tl.debug_barrier()  # a thread holding a replica of x must not see the zero stored below
            tl.store(v + rows, x * sc, mask=rm)
            tl.store(a + rows * n + k, tl.zeros_like(x), mask=rm)
        tl.store(a + k * n + k, beta)
        tl.debug_barrier()
        # trailing update A[k:, j] -= tau v (v^T A[k:, j]), fused with the norms of rows k+1.. (next pivot)
        for j0 in range(k + 1, n, BLOCK_N):
            cols = j0 + cols0
            cm = cols < n
            w = tl.zeros((BLOCK_N,), dtype=tl.float64)
            for i0 in range(k, m, BLOCK_M):
                rows = i0 + rows0
                rm = rows < m
                msk = rm[:, None] & cm[None, :]
                x = tl.load(a + rows[:, None] * n + cols[None, :], mask=msk, other=0.0)
                vv = tl.load(v + rows, mask=rm, other=0.0)
                w += tl.sum(vv[:, None] * x, axis=0)
            w = w * tau
            tl.debug_barrier()
            scale = tl.zeros((BLOCK_N,), dtype=tl.float64)
            ssq = tl.zeros((BLOCK_N,), dtype=tl.float64)
            for i0 in range(k, m, BLOCK_M):
                rows = i0 + rows0
                rm = rows < m
                msk = rm[:, None] & cm[None, :]
                ptrs = a + rows[:, None] * n + cols[None, :]
                x = tl.load(ptrs, mask=msk, other=0.0)
                vv = tl.load(v + rows, mask=rm, other=0.0)
                tl.debug_barrier()  # every load of this tile before any store to it
                x = x - vv[:, None] * w[None, :]
                tl.store(ptrs, x, mask=msk)
                below = (rows > k)[:, None] & msk
                scale, ssq = _ssq_update(scale, ssq, tl.where(below, x, 0.0))
            tl.store(nrm + cols, scale * tl.sqrt(ssq), mask=cm)
        tl.debug_barrier()


def qrcp(
    A: torch.Tensor, block_m: int = 32, block_n: int = 32, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column-pivoted Householder QR of A (B, m, n) (any float dtype; computed in float64): (R, perm)."""
    if A.dim() != 3:
        raise ValueError(f"qrcp: A must be (B, m, n), got shape {tuple(A.shape)}")
    B, m, n = A.shape
    kmax = min(m, n)
    work = A.to(torch.float64, copy=True).contiguous()  # the kernel works in place on its own copy
    perm = torch.arange(n, device=A.device, dtype=torch.long).repeat(B, 1)
    if B == 0 or kmax == 0:
        return torch.zeros(B, kmax, n, dtype=torch.float64, device=A.device), perm
    v = torch.empty(B, m, dtype=torch.float64, device=A.device)
    nrm = torch.empty(B, n, dtype=torch.float64, device=A.device)
    _qrcp_kernel[(B,)](work, v, nrm, perm, m, n, kmax, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    return torch.triu(work[:, :kmax, :]), perm
