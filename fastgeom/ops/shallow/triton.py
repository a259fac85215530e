"""Triton kernel of the fused shallow-network geometry op (d <= 4), float64.

Same algorithm as csrc/ops/shallow_core.h (two passes over hidden units per tile of points:
streaming Givens QR of diag(sigma') W / sqrt(n) in registers (metric and log volume without squaring
the condition number) -> whitened third moments -> Ricci scalar); the torch reference
fastgeom/ops/shallow/reference.py is the spec. Inputs are padded to 4 input dimensions (padded
metric entries are the identity, padded weights zero, so they contribute nothing).
Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests). The interpreter has no
libdevice, so only tl.exp / tl.sigmoid / tl.erf / tl.sin / tl.cos are used; tanh' = 4 sigmoid(2z) sigmoid(-2z),
and GELU's Phi(z) below z = -3 comes from a continued fraction of the Mills ratio (1 + erf cancels there).
The 20 accumulators of the symmetric third-moment tensor (a <= b <= c, squared norm with
multiplicities 1/3/6) are written out because Triton cannot index lists of tensors. Pass 1 is
sequential over hidden units (a Givens update per unit, vectorised over the BLOCK_N points); pass 2
processes BLOCK_H units at a time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GELU_TAIL = tl.constexpr(3.0)  # below z = -3, 1 + erf(z / sqrt 2) loses > 1e-13 relative: use the Mills ratio
MILLS_TERMS = tl.constexpr(50)  # continued-fraction terms: < 2e-16 relative for x >= 3


@triton.jit
def _mills(x):
    """Mills ratio Phi(-x) / phi(x) for x >= GELU_TAIL by Laplace's continued fraction
    1 / (x + 1 / (x + 2 / (x + 3 / ...))), evaluated bottom-up (only +, / : the interpreter has no erfc).
    Arguments below GELU_TAIL are clamped (the caller discards them)."""
    xs = tl.maximum(x, GELU_TAIL)
    t = xs
    for i in tl.static_range(MILLS_TERMS):
        t = xs + (MILLS_TERMS - i) / t
    return 1.0 / t


@triton.jit
def _act(z, CODE: tl.constexpr, power):
    """sigma'(z), sigma''(z) for the activation codes of fastgeom/activations.py::KERNEL_CODES."""
    if CODE == 0:  # sigmoid
        sp = tl.sigmoid(z)
        sm = tl.sigmoid(-z)
        d1 = sp * sm
        d2 = d1 * (sm - sp)
    elif CODE == 1:  # tanh: 1 - t^2 = 4 sigmoid(2z) sigmoid(-2z), t = sigmoid(2z) - sigmoid(-2z)
        sp = tl.sigmoid(2.0 * z)
        sm = tl.sigmoid(-2.0 * z)
        d1 = 4.0 * sp * sm
        d2 = -2.0 * (sp - sm) * d1
    elif CODE == 2:  # erf
        d1 = 1.1283791670955126 * tl.exp(-z * z)
        d2 = -2.0 * z * d1
    elif CODE == 3:  # gelu: d1 = Phi(z) + z phi(z)
        phi = 0.3989422804014327 * tl.exp(-0.5 * z * z)
        d1 = tl.where(z < -GELU_TAIL, phi * (_mills(-z) + z), 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * phi)
        d2 = (2.0 - z * z) * phi
    elif CODE == 4:  # softplus
        sp = tl.sigmoid(z)
        d1 = sp
        d2 = sp * tl.sigmoid(-z)
    elif CODE == 5:  # sin
        d1 = tl.cos(z)
        d2 = -tl.sin(z)
    else:  # z^power
        zk2 = tl.full(z.shape, 1.0, tl.float64)
        for _ in range(power - 2):
            zk2 = zk2 * z
        if power >= 2:
            d1 = power * zk2 * z
            d2 = (power * (power - 1)) * zk2
        else:
            d1 = tl.full(z.shape, 1.0, tl.float64)
            d2 = tl.zeros(z.shape, tl.float64)
    return d1, d2


@triton.jit
def _givens(a, b):
    """Rotation (c, s) with c a + s b = h = sqrt(a^2 + b^2), -s a + c b = 0; identity where h = 0.
    h is scaled by max(|a|, |b|) first (hypot), so a, b ~ 1e-170 (saturated units) do not underflow."""
    m = tl.maximum(tl.abs(a), tl.abs(b))
    nz = m > 0.0
    ms = tl.where(nz, m, 1.0)
    an = a / ms
    bn = b / ms
    h = m * tl.sqrt(an * an + bn * bn)
    hs = tl.where(nz, h, 1.0)
    return tl.where(nz, a / hs, 1.0), tl.where(nz, b / hs, 0.0), h


@triton.jit
def _col(ptr, idx, c, d, mask):
    return tl.load(ptr + idx * d + c, mask=mask & (c < d), other=0.0)


@triton.jit
def _shallow_kernel(
    W,
    B,
    X,
    G,
    LV,
    R,
    N,
    n,
    d,
    power,
    inv_n,
    inv_sqrt_n,
    CODE: tl.constexpr,
    WANT_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < N
    x0 = _col(X, rows, 0, d, rm)
    x1 = _col(X, rows, 1, d, rm)
    x2 = _col(X, rows, 2, d, rm)
    x3 = _col(X, rows, 3, d, rm)
    # pass 1: streaming Givens QR of the rows s_j w_j / sqrt(n), one hidden unit at a time (vectorised
    # over the points of the tile): upper triangular R with R^T R = g, never forming g.
    r00 = tl.zeros((BLOCK_N,), tl.float64)
    r01 = tl.zeros((BLOCK_N,), tl.float64)
    r02 = tl.zeros((BLOCK_N,), tl.float64)
    r03 = tl.zeros((BLOCK_N,), tl.float64)
    r11 = tl.zeros((BLOCK_N,), tl.float64)
    r12 = tl.zeros((BLOCK_N,), tl.float64)
    r13 = tl.zeros((BLOCK_N,), tl.float64)
    r22 = tl.zeros((BLOCK_N,), tl.float64)
    r23 = tl.zeros((BLOCK_N,), tl.float64)
    r33 = tl.zeros((BLOCK_N,), tl.float64)
    for j in range(0, n):
        w0 = tl.load(W + j * d)
        w1 = tl.load(W + j * d + 1, mask=d > 1, other=0.0)
        w2 = tl.load(W + j * d + 2, mask=d > 2, other=0.0)
        w3 = tl.load(W + j * d + 3, mask=d > 3, other=0.0)
        z = x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3 + tl.load(B + j)
        d1, d2 = _act(z, CODE, power)
        sc = d1 * inv_sqrt_n
        q0 = sc * w0
        q1 = sc * w1
        q2 = sc * w2
        q3 = sc * w3
        c, s, r00 = _givens(r00, q0)
        r01, q1 = c * r01 + s * q1, c * q1 - s * r01
        r02, q2 = c * r02 + s * q2, c * q2 - s * r02
        r03, q3 = c * r03 + s * q3, c * q3 - s * r03
        c, s, r11 = _givens(r11, q1)
        r12, q2 = c * r12 + s * q2, c * q2 - s * r12
        r13, q3 = c * r13 + s * q3, c * q3 - s * r13
        c, s, r22 = _givens(r22, q2)
        r23, q3 = c * r23 + s * q3, c * q3 - s * r23
        c, s, r33 = _givens(r33, q3)
    # g = R^T R, stored (d, d) symmetric
    g00 = r00 * r00
    g10 = r00 * r01
    g11 = r01 * r01 + r11 * r11
    g20 = r00 * r02
    g21 = r01 * r02 + r11 * r12
    g22 = r02 * r02 + r12 * r12 + r22 * r22
    g30 = r00 * r03
    g31 = r01 * r03 + r11 * r13
    g32 = r02 * r03 + r12 * r13 + r22 * r23
    g33 = r03 * r03 + r13 * r13 + r23 * r23 + r33 * r33
    # store g (d, d), symmetric
    base = G + rows * d * d
    tl.store(base + 0, g00, mask=rm)
    tl.store(base + 1, g10, mask=rm & (d > 1))
    tl.store(base + d, g10, mask=rm & (d > 1))
    tl.store(base + d + 1, g11, mask=rm & (d > 1))
    tl.store(base + 2, g20, mask=rm & (d > 2))
    tl.store(base + 2 * d, g20, mask=rm & (d > 2))
    tl.store(base + d + 2, g21, mask=rm & (d > 2))
    tl.store(base + 2 * d + 1, g21, mask=rm & (d > 2))
    tl.store(base + 2 * d + 2, g22, mask=rm & (d > 2))
    tl.store(base + 3, g30, mask=rm & (d > 3))
    tl.store(base + 3 * d, g30, mask=rm & (d > 3))
    tl.store(base + d + 3, g31, mask=rm & (d > 3))
    tl.store(base + 3 * d + 1, g31, mask=rm & (d > 3))
    tl.store(base + 2 * d + 3, g32, mask=rm & (d > 3))
    tl.store(base + 3 * d + 2, g32, mask=rm & (d > 3))
    tl.store(base + 3 * d + 3, g33, mask=rm & (d > 3))
    # L = R^T; padded dimensions get the identity
    l00 = r00
    l10 = r01
    l20 = r02
    l30 = r03
    l11 = tl.where(d > 1, r11, 1.0)
    l21 = r12
    l31 = r13
    l22 = tl.where(d > 2, r22, 1.0)
    l32 = r23
    l33 = tl.where(d > 3, r33, 1.0)
    pd = (l00 > 0.0) & (l11 > 0.0) & (l22 > 0.0) & (l33 > 0.0)
    lv = tl.log(l00) + tl.log(l11) + tl.log(l22) + tl.log(l33)
    tl.store(LV + rows, tl.where(pd, lv, float("-inf")), mask=rm)
    if WANT_R:
        # M = L^-1 (lower triangular)
        m00 = 1.0 / l00
        m11 = 1.0 / l11
        m22 = 1.0 / l22
        m33 = 1.0 / l33
        m10 = -(l10 * m00) * m11
        m21 = -(l21 * m11) * m22
        m20 = -(l20 * m00 + l21 * m10) * m22
        m32 = -(l32 * m22) * m33
        m31 = -(l31 * m11 + l32 * m21) * m33
        m30 = -(l30 * m00 + l31 * m10 + l32 * m20) * m33
        v0 = tl.zeros((BLOCK_N,), tl.float64)
        v1 = tl.zeros((BLOCK_N,), tl.float64)
        v2 = tl.zeros((BLOCK_N,), tl.float64)
        v3 = tl.zeros((BLOCK_N,), tl.float64)
        t000 = tl.zeros((BLOCK_N,), tl.float64)
        t001 = tl.zeros((BLOCK_N,), tl.float64)
        t002 = tl.zeros((BLOCK_N,), tl.float64)
        t003 = tl.zeros((BLOCK_N,), tl.float64)
        t011 = tl.zeros((BLOCK_N,), tl.float64)
        t012 = tl.zeros((BLOCK_N,), tl.float64)
        t013 = tl.zeros((BLOCK_N,), tl.float64)
        t022 = tl.zeros((BLOCK_N,), tl.float64)
        t023 = tl.zeros((BLOCK_N,), tl.float64)
        t033 = tl.zeros((BLOCK_N,), tl.float64)
        t111 = tl.zeros((BLOCK_N,), tl.float64)
        t112 = tl.zeros((BLOCK_N,), tl.float64)
        t113 = tl.zeros((BLOCK_N,), tl.float64)
        t122 = tl.zeros((BLOCK_N,), tl.float64)
        t123 = tl.zeros((BLOCK_N,), tl.float64)
        t133 = tl.zeros((BLOCK_N,), tl.float64)
        t222 = tl.zeros((BLOCK_N,), tl.float64)
        t223 = tl.zeros((BLOCK_N,), tl.float64)
        t233 = tl.zeros((BLOCK_N,), tl.float64)
        t333 = tl.zeros((BLOCK_N,), tl.float64)
        lost = tl.zeros((BLOCK_N,), tl.int32)
        for h0 in range(0, n, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            hm = hs < n
            w0 = _col(W, hs, 0, d, hm)
            w1 = _col(W, hs, 1, d, hm)
            w2 = _col(W, hs, 2, d, hm)
            w3 = _col(W, hs, 3, d, hm)
            bb = tl.load(B + hs, mask=hm, other=0.0)
            z = (
                x0[:, None] * w0[None, :]
                + x1[:, None] * w1[None, :]
                + x2[:, None] * w2[None, :]
                + x3[:, None] * w3[None, :]
                + bb[None, :]
            )
            d1, d2 = _act(z, CODE, power)
            P = tl.where(hm[None, :], d1 * d2, 0.0)
            # sigma' sigma'' underflowed while neither is 0: that unit's term is lost, R untrusted (NaN)
            uf = hm[None, :] & (tl.abs(P) < 2.2250738585072014e-308) & (d1 != 0.0) & (d2 != 0.0)
            lost = tl.maximum(lost, tl.max(uf.to(tl.int32), axis=1))
            u0 = m00[:, None] * w0[None, :]
            u1 = m10[:, None] * w0[None, :] + m11[:, None] * w1[None, :]
            u2 = m20[:, None] * w0[None, :] + m21[:, None] * w1[None, :] + m22[:, None] * w2[None, :]
            u3 = (
                m30[:, None] * w0[None, :]
                + m31[:, None] * w1[None, :]
                + m32[:, None] * w2[None, :]
                + m33[:, None] * w3[None, :]
            )
            Puu = P * (u0 * u0 + u1 * u1 + u2 * u2 + u3 * u3)
            v0 += tl.sum(Puu * u0, axis=1)
            v1 += tl.sum(Puu * u1, axis=1)
            v2 += tl.sum(Puu * u2, axis=1)
            v3 += tl.sum(Puu * u3, axis=1)
            Pu0 = P * u0
            Pu1 = P * u1
            Pu2 = P * u2
            Pu3 = P * u3
            t000 += tl.sum(Pu0 * u0 * u0, axis=1)
            t001 += tl.sum(Pu0 * u0 * u1, axis=1)
            t002 += tl.sum(Pu0 * u0 * u2, axis=1)
            t003 += tl.sum(Pu0 * u0 * u3, axis=1)
            t011 += tl.sum(Pu0 * u1 * u1, axis=1)
            t012 += tl.sum(Pu0 * u1 * u2, axis=1)
            t013 += tl.sum(Pu0 * u1 * u3, axis=1)
            t022 += tl.sum(Pu0 * u2 * u2, axis=1)
            t023 += tl.sum(Pu0 * u2 * u3, axis=1)
            t033 += tl.sum(Pu0 * u3 * u3, axis=1)
            t111 += tl.sum(Pu1 * u1 * u1, axis=1)
            t112 += tl.sum(Pu1 * u1 * u2, axis=1)
            t113 += tl.sum(Pu1 * u1 * u3, axis=1)
            t122 += tl.sum(Pu1 * u2 * u2, axis=1)
            t123 += tl.sum(Pu1 * u2 * u3, axis=1)
            t133 += tl.sum(Pu1 * u3 * u3, axis=1)
            t222 += tl.sum(Pu2 * u2 * u2, axis=1)
            t223 += tl.sum(Pu2 * u2 * u3, axis=1)
            t233 += tl.sum(Pu2 * u3 * u3, axis=1)
            t333 += tl.sum(Pu3 * u3 * u3, axis=1)
        t2 = (
            1.0 * t000 * t000
            + 3.0 * t001 * t001
            + 3.0 * t002 * t002
            + 3.0 * t003 * t003
            + 3.0 * t011 * t011
            + 6.0 * t012 * t012
            + 6.0 * t013 * t013
            + 3.0 * t022 * t022
            + 6.0 * t023 * t023
            + 3.0 * t033 * t033
            + 1.0 * t111 * t111
            + 3.0 * t112 * t112
            + 3.0 * t113 * t113
            + 3.0 * t122 * t122
            + 6.0 * t123 * t123
            + 3.0 * t133 * t133
            + 1.0 * t222 * t222
            + 3.0 * t223 * t223
            + 3.0 * t233 * t233
            + 1.0 * t333 * t333
        )
        v2n = v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3
        r = (t2 - v2n) * inv_n * inv_n
        tl.store(R + rows, tl.where(pd & (lost == 0), r, float("nan")), mask=rm)


def geometry(
    W: torch.Tensor,
    b: torch.Tensor,
    x: torch.Tensor,
    code: int,
    power: int,
    want_ricci: bool,
    block_n: int | None = None,
    block_h: int | None = None,
):
    """(g (N, d, d), logvol (N,), ricci (N,)) float64 for d <= 4 (ricci NaN when not wanted)."""
    n, d = W.shape
    if not 1 <= d <= 4:
        raise ValueError(f"the Triton shallow kernel handles 1 <= d <= 4 inputs, got d = {d}")
    W, b, x = (t.to(torch.float64).contiguous() for t in (W, b, x))
    N = x.shape[0]
    g = torch.empty(N, d, d, dtype=torch.float64, device=x.device)
    lv = torch.empty(N, dtype=torch.float64, device=x.device)
    R = torch.full((N,), float("nan"), dtype=torch.float64, device=x.device)
    if N == 0:
        return g, lv, R
    interp = x.device.type != "cuda"
    bn = block_n or (64 if interp else 32)
    bh = block_h or (64 if interp else 32)
    grid = (triton.cdiv(N, bn),)
    _shallow_kernel[grid](
        W,
        b,
        x,
        g,
        lv,
        R,
        N,
        n,
        d,
        int(power),
        1.0 / n,
        1.0 / n**0.5,
        CODE=int(code),
        WANT_R=bool(want_ricci),
        BLOCK_N=bn,
        BLOCK_H=bh,
    )
    return g, lv, R
