"""Infinite-width geometry of a shallow network: NNGP metric (MATH.md 4), NTK metric (MATH 5) and
the Amari-Wu conformal kernel modification (MATH 6.1).

Weights W_jmu ~ N(0, sigma_w^2), biases b_j ~ N(0, sigma_b^2), n -> infinity; the empirical metric
of Phi(x) = sigma(W x + b)/sqrt(n) converges to

    g(x) = f(r) I + 2 f'(r) x x^T,   r = |x|^2,   f(r) = sigma_w^2 xi(sigma_w^2 r + sigma_b^2),
    xi(q) = E_{z ~ N(0, q)}[sigma'(z)^2]                                              (MATH 4.1)

and vol = sqrt(f^(d-1) (f + 2 r f')), R from MATH 4.2 (true convention, 2-sphere +2).
Activation names denote the plain functions: "erf" is torch.erf(z) (MATH 4.3 writes erf(z/sqrt 2):
its formulas hold here with sigma_w^2 -> 2 sigma_w^2, sigma_b^2 -> 2 sigma_b^2), "z^k" is z**k (MATH 4.4
normalises by sqrt((2k-1)!!)). Closed forms for erf, sin and monomials; any other activation
(or ``method="quadrature"``) by Gaussian quadrature of sigma'^2, sigma''^2: for q = sigma_w^2 r + sigma_b^2 < 1
a trapezoid rule with q-derivatives by Price's theorem (derivatives of sigma'^2 by autograd), for q >= 1
Gauss-Legendre panels scaled to the octave of q with the q-derivatives on the Gaussian (Hermite weights),
validated up to q = 1e10 (raises above). f + 2 r f' and the Ricci numerator are formed from the moments
directly (``moments``: rad, kap), so nothing cancels at large |x|.

>>> import torch, fastgeom.nngp as ng
>>> x = torch.randn(100, 3, dtype=torch.float64)
>>> ng.volume_element(x, "erf", sigma_w=1.0, sigma_b=0.5).shape
torch.Size([100])
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import jacfwd, jacrev, vmap

from . import activations as _acts

__all__ = [
    "metric_coefficients",
    "moments",
    "metric",
    "volume_element",
    "log_volume_element",
    "ricci_scalar",
    "ntk_coefficients",
    "ntk_metric",
    "ntk_volume_element",
    "amari_wu_metric",
    "amari_wu_volume_element",
    "conformal_factor",
]

METHODS = ("auto", "closed", "quadrature")


def _dfact(m: int) -> float:
    """Double factorial m!! for odd m >= -1 ((-1)!! = 1)."""
    out = 1.0
    while m > 1:
        out *= m
        m -= 2
    return out


def _pow_derivs(c: float, p: int, q: torch.Tensor, orders) -> list:
    """[d^k/dq^k (c q^p) for k in orders], exactly zero where the falling factorial vanishes."""
    res = []
    for k in orders:
        fall = math.prod(p - i for i in range(k))
        res.append(torch.zeros_like(q) if fall == 0 else c * fall * q ** (p - k))
    return res


def _closed_moments(q: torch.Tensor, act, sb2: float) -> dict | None:
    """xi, xi', xi'', eta, eta', rad, kap in closed form (None if this activation has none); sb2 = sigma_b^2."""
    if act.name == "erf":  # sigma = erf(z), sigma' = 2/sqrt(pi) exp(-z^2)
        u = 1 + 4 * q
        c, rp = 1 + 4 * sb2, (q - sb2).clamp_min(0)
        return {
            "xi": 4 / math.pi * u**-0.5,
            "dxi": -8 / math.pi * u**-1.5,
            "ddxi": 48 / math.pi * u**-2.5,
            "eta": 16 / math.pi * q * u**-1.5,
            "deta": 16 / math.pi * (1 - 2 * q) * u**-2.5,
            "rad": 4 / math.pi * c * u**-1.5,
            "kap": -12 / math.pi * c * (c + 8 * rp) * u**-2.5,
        }
    if act.name == "sin":  # sigma' = cos: E cos^2 = (1 + e^-2q) / 2, E sin^2 = (1 - e^-2q) / 2
        e = torch.exp(-2 * q)
        m = {"xi": (1 + e) / 2, "dxi": -e, "ddxi": 2 * e, "eta": (1 - e) / 2, "deta": e}
    elif act.code == _acts.KERNEL_CODES["monomial"]:
        k = act.power
        xi, dxi, ddxi = _pow_derivs(k * k * _dfact(2 * k - 3), k - 1, q, (0, 1, 2))
        if k >= 2:
            eta, deta = _pow_derivs((k * (k - 1)) ** 2 * _dfact(2 * k - 5), k - 2, q, (0, 1))
        else:
            eta = deta = torch.zeros_like(q)
        m = {"xi": xi, "dxi": dxi, "ddxi": ddxi, "eta": eta, "deta": deta}
    else:
        return None
    rp = (q - sb2).clamp_min(0)
    m["rad"] = m["xi"] + 2 * rp * m["dxi"]
    m["kap"] = 4 * rp * rp * m["ddxi"] - 3 * m["xi"]
    return m


QUAD_L = 13.0  # integrate t = z / sqrt(q) over [-QUAD_L, QUAD_L] (phi(13) ~ 1e-37)
QUAD_DZ = 0.02  # largest node spacing in z (activations vary on scale ~1)
QUAD_QLO = 0.01  # below this variance the per-point grid in t = z / sqrt(q) is used
QUAD_QHERM = 1.0  # from this variance on, q-derivatives by Hermite weights on Gauss-Legendre panels
QUAD_QMAX = 1e10  # largest validated variance of the quadrature (|x| ~ 1e5 at sigma_w = 1)
QUAD_ZACT = 40.0  # beyond |z| = 40 a built-in sigma'^2, sigma''^2 varies on the scale of |z| (or is < 1e-17)
_KEYS = ("xi", "dxi", "ddxi", "eta", "deta", "rad", "kap")
_GL_T, _GL_W = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(16))


def _nth(fn, z: torch.Tensor, k: int) -> torch.Tensor:
    """k-th derivative of the elementwise function fn at z (autograd; zero where it vanishes identically)."""
    z = z.detach().requires_grad_(k > 0)
    y = fn(z)
    for i in range(k):
        if not y.requires_grad:
            return torch.zeros_like(z).detach()
        (y,) = torch.autograd.grad(y.sum(), z, create_graph=i < k - 1, allow_unused=True, materialize_grads=True)
    return y.detach()


def _derivs(act, z):
    """The five integrands (sigma'^2, (sigma'^2)''/2, (sigma'^2)''''/4, sigma''^2, (sigma''^2)''/2) at z, (5, Z)."""

    def h1(u):
        return act.d1(u) ** 2

    def h2(u):
        return act.d2(u) ** 2

    return torch.stack([_nth(h1, z, 0), _nth(h1, z, 2) / 2, _nth(h1, z, 4) / 4, _nth(h2, z, 0), _nth(h2, z, 2) / 2])


def _price_moments(q: torch.Tensor, act, rp: torch.Tensor, dz: float = QUAD_DZ) -> torch.Tensor:
    """(7, M) moments for q < QUAD_QHERM: expectations by the trapezoid rule (spectrally accurate for
    analytic, Gaussian-damped integrands), q-derivatives by Price's theorem d/dq E h = E[h'']/2 (the
    Gaussian is no wider than sigma's features here, so the derivatives of h carry the signal).
    q >= QUAD_QLO share one grid in z with spacing dz; smaller q use a grid in t = z / sqrt(q)."""
    out = torch.empty(5, q.numel(), dtype=torch.float64, device=q.device)
    big = q >= QUAD_QLO
    if big.any():
        qb = q[big]
        zmax = QUAD_L * math.sqrt(float(qb.max()))
        m = int(math.ceil(zmax / dz))
        z = torch.linspace(-zmax, zmax, 2 * m + 1, dtype=torch.float64, device=q.device)
        wts = torch.exp(-0.5 * z * z / qb[:, None])  # (M, Z); normalised so that E[1] = 1 exactly
        out[:, big] = _derivs(act, z) @ (wts / wts.sum(-1, keepdim=True)).T
    if (~big).any():
        sq = torch.sqrt(q[~big].clamp_min(0))
        t = torch.linspace(-QUAD_L, QUAD_L, 2 * int(QUAD_L / 0.05) + 1, dtype=torch.float64, device=q.device)
        w = torch.exp(-0.5 * t * t)
        w = w / w.sum()
        out[:, ~big] = _derivs(act, (sq[:, None] * t[None, :]).reshape(-1)).reshape(5, sq.numel(), -1) @ w
    rad = out[0] + 2 * rp * out[1]
    kap = 4 * rp * rp * out[2] - 3 * out[0]
    return torch.cat([out, rad[None], kap[None]])


def _panels(q_lo: float, q_hi: float) -> torch.Tensor:
    """Breakpoints 0 = z_0 < ... = QUAD_L sqrt(q_hi) of Gauss-Legendre panels for variances in [q_lo, q_hi]:
    width <= 1 where sigma varies (|z| < QUAD_ZACT), <= |z| / 4 beyond, and small enough that the Gaussian
    exponent changes by at most 3 across a panel (3 q_lo / max(z, sqrt q_lo))."""
    zend = QUAD_L * math.sqrt(q_hi)
    br = [0.0]
    while br[-1] < zend:
        z = br[-1]
        w = min(1.0 if z < QUAD_ZACT else z / 4, 3 * q_lo / max(z, math.sqrt(q_lo)))
        br.append(min(z + w, zend))
    return torch.tensor(br, dtype=torch.float64)


def _hermite_moments(q: torch.Tensor, act, sb2: float) -> torch.Tensor:
    """(7, M) moments for q >= QUAD_QHERM on 16-point Gauss-Legendre panels scaled to each octave of q,
    the q-derivatives carried by the Gaussian: with t = z / sqrt(q), d/dq E h = E[h He2(t)] / (2q) and
    d^2/dq^2 E h = E[h He4(t)] / (4 q^2) (He2 = t^2 - 1, He4 = t^4 - 6 t^2 + 3). sigma'^2 is narrower
    than the Gaussian here, so these weights do not cancel, and rad and kap are formed from
    E[h], E[h t^2], E[h t^4] (beta = sigma_b^2 / q) without cancellation either."""
    out = torch.empty(7, q.numel(), dtype=torch.float64, device=q.device)
    octave = torch.floor(torch.log2(q)).long()
    for o in torch.unique(octave).tolist():
        sel = (octave == o).nonzero().flatten()
        br = _panels(2.0**o, 2.0 ** (o + 1))
        a, b = br[:-1, None], br[1:, None]
        zp = ((a + b) / 2 + (b - a) / 2 * _GL_T).reshape(-1)
        wp = ((b - a) / 2 * _GL_W).reshape(-1)
        z = torch.cat([-zp.flip(0), zp]).to(q.device)
        wz = torch.cat([wp.flip(0), wp]).to(q.device)
        h1, h2 = act.d1(z) ** 2, act.d2(z) ** 2
        qq = q[sel]
        t2 = z * z / qq[:, None]  # (m, Z)
        wg = wz * torch.exp(-0.5 * t2)
        wg = wg / wg.sum(-1, keepdim=True)  # E[1] = 1 exactly
        M0, M2, M4 = ((wg * h1 * t2**k).sum(-1) for k in (0, 1, 2))
        E0, E2 = (wg * h2).sum(-1), (wg * h2 * t2).sum(-1)
        beta = sb2 / qq
        out[:, sel] = torch.stack(
            [
                M0,
                (M2 - M0) / (2 * qq),
                (M4 - 6 * M2 + 3 * M0) / (4 * qq * qq),
                E0,
                (E2 - E0) / (2 * qq),
                beta * M0 + (1 - beta) * M2,
                (1 - beta) ** 2 * (M4 - 6 * M2) - 3 * beta * (2 - beta) * M0,
            ]
        )
    return out


def _quad_moments(q: torch.Tensor, act, sb2: float) -> dict:
    """The seven moments by quadrature: Price's form below QUAD_QHERM, Hermite-weighted panels above."""
    if q.numel() and float(q.max()) > QUAD_QMAX:
        raise ValueError(
            f"variance q = sigma_w^2 |x|^2 + sigma_b^2 = {float(q.max()):.3g} is above the validated "
            f"range of the quadrature (q <= {QUAD_QMAX:.0e}); rescale x or sigma_w"
        )
    out = torch.empty(7, q.numel(), dtype=torch.float64, device=q.device)
    lo = q < QUAD_QHERM
    if lo.any():
        out[:, lo] = _price_moments(q[lo], act, (q[lo] - sb2).clamp_min(0))
    if (~lo).any():
        out[:, ~lo] = _hermite_moments(q[~lo], act, sb2)
    return dict(zip(_KEYS, out.unbind(0)))


def _check_real(name: str, t: torch.Tensor) -> None:
    if t.is_complex():
        raise TypeError(f"{name} is complex ({t.dtype}); the NNGP geometry is defined for real inputs")


def moments(q, activation="erf", method: str = "auto", sigma_b: float = 0.0) -> dict:
    """Gaussian moments at variance q (M,): xi = E[sigma'^2], dxi, ddxi (its q-derivatives),
    eta = E[sigma''^2], deta; and, with r' = q - sigma_b^2, rad = xi + 2 r' xi' and
    kap = 4 r'^2 xi'' - 3 xi (the radial metric coefficient and the Ricci numerator, formed without
    cancellation at large q); each (M,) float64. ``method``: "closed" (erf, sin, z^k), "quadrature", "auto".
    The quadrature is validated for q <= QUAD_QMAX and raises above it."""
    act = _acts.get(activation)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    q = torch.as_tensor(q)
    _check_real("q", q)
    q = q.to(torch.float64).reshape(-1)
    if (q < 0).any():
        raise ValueError("variance q must be >= 0")
    if method in ("auto", "closed"):
        res = _closed_moments(q, act, float(sigma_b) ** 2)
        if res is not None:
            return res
        if method == "closed":
            raise ValueError(
                f"no closed form for activation {act.name!r} (closed forms: 'erf', 'sin', 'z^k'); "
                "use method='quadrature' or 'auto'"
            )
    return _quad_moments(q, act, float(sigma_b) ** 2)


def _prep_x(x):
    x = torch.as_tensor(x)
    _check_real("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}; use x[:, None] for d = 1")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; clean the input first")
    return x


def _check_sig(sigma_w, sigma_b, sigma_v=1.0):
    for nm, v in (("sigma_w", sigma_w), ("sigma_b", sigma_b), ("sigma_v", sigma_v)):
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{nm} must be a finite standard deviation >= 0, got {v!r}")
    if sigma_w == 0:
        raise ValueError("sigma_w must be > 0 (sigma_w = 0 gives a constant feature map with zero metric)")


def _coeffs(r, activation, sigma_w, sigma_b, method) -> dict:
    """Moments at q = sigma_w^2 r + sigma_b^2 for squared norms r (M,), as in ``moments``."""
    _check_sig(sigma_w, sigma_b)
    r = torch.as_tensor(r)
    _check_real("r", r)
    r = r.to(torch.float64)
    m = moments(sigma_w**2 * r.reshape(-1) + sigma_b**2, activation, method, sigma_b=sigma_b)
    return {k: v.reshape(r.shape) for k, v in m.items()}


def metric_coefficients(
    r, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, d: int | None = None, *, method: str = "auto"
):
    """(f, f', f'') at squared norms r (M,): the NNGP metric is g = f(r) I + 2 f'(r) x x^T (MATH 4.1).

    ``d`` (input dimension) is accepted for symmetry with the other functions; f does not depend on it."""
    if d is not None and d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    m = _coeffs(r, activation, sigma_w, sigma_b, method)
    s2 = sigma_w**2
    return s2 * m["xi"], s2**2 * m["dxi"], s2**3 * m["ddxi"]


def metric(x, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, *, method: str = "auto"):
    """(N, d, d) NNGP metric f I + 2 f' x x^T = f (I - u u^T) + (f + 2 r f') u u^T, u = x / |x|."""
    x = _prep_x(x)
    r = (x * x).sum(-1)
    m = _coeffs(r, activation, sigma_w, sigma_b, method)
    f, fr = sigma_w**2 * m["xi"], sigma_w**2 * m["rad"]  # fr = f + 2 r f', without cancellation
    u = x / torch.where(r > 0, r, torch.ones_like(r)).sqrt()[:, None]
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    uu = u[:, :, None] * u[:, None, :]
    return f[:, None, None] * (eye - uu) + fr[:, None, None] * uu


def log_volume_element(x, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, *, method: str = "auto"):
    """(N,) log vol = ((d-1) log f + log(f + 2 r f'))/2 (MATH 4.2); f + 2 r f' = sigma_w^2 rad."""
    x = _prep_x(x)
    m = _coeffs((x * x).sum(-1), activation, sigma_w, sigma_b, method)
    s2 = sigma_w**2
    return 0.5 * ((x.shape[1] - 1) * torch.log(s2 * m["xi"]) + torch.log(s2 * m["rad"]))


def volume_element(x, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, *, method: str = "auto"):
    """(N,) NNGP volume element sqrt(f^(d-1) (f + 2 r f')) (MATH 4.2)."""
    return torch.exp(log_volume_element(x, activation, sigma_w, sigma_b, method=method))


def ricci_scalar(
    x, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, *, method: str = "auto", convention: str = "true"
):
    """(N,) Ricci scalar of the NNGP metric (MATH 4.2 boxed formula); "paper" convention gives 3x.

    The boxed formula -(d-1) r f' ((d+2) f f' + 2(d-4) r f'^2 + 4 r f f'') / (f^2 (f + 2 r f')^2) is
    evaluated as -(d-1) (f'/f) N / (f rho^2) with rho = (f + 2 r f') / f = rad / xi and
    N = (d-4) rho^2 / 2 + (10-d) rho / 2 + kap / xi, algebraically equal, so that the leading terms
    that cancel at large |x| never meet in floating point."""
    if convention not in ("true", "paper"):
        raise ValueError(f"unknown convention {convention!r}; use 'true' or 'paper' (3x the true value)")
    x = _prep_x(x)
    d = x.shape[1]
    m = _coeffs((x * x).sum(-1), activation, sigma_w, sigma_b, method)
    rho = m["rad"] / m["xi"]
    N = (d - 4) * rho * rho / 2 + (10 - d) * rho / 2 + m["kap"] / m["xi"]
    R = -(d - 1) * (m["dxi"] / m["xi"]) * N / (m["xi"] * rho * rho)
    return R * (3.0 if convention == "paper" else 1.0)


# ----------------------------------------------------------------------------------------------- NTK


def ntk_coefficients(
    r, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, sigma_v: float = 1.0, *, method: str = "auto"
):
    """(A, B) at squared norms r: infinite-width NTK metric g = A I + B x x^T (MATH 5; standard
    parameterisation, trained v, W, b, readout variance sigma_v^2)."""
    _check_sig(sigma_w, sigma_b, sigma_v)
    r = torch.as_tensor(r, dtype=torch.float64)
    m = moments(sigma_w**2 * r.reshape(-1) + sigma_b**2, activation, method)
    rr = r.reshape(-1)
    sw2, sv2 = sigma_w**2, sigma_v**2
    A = sw2 * m["xi"] + sv2 * (m["xi"] + sw2 * (1 + rr) * m["eta"])
    B = 2 * sw2**2 * m["dxi"] + 2 * sv2 * sw2 * (m["dxi"] + sw2 * (1 + rr) * m["deta"])
    return A.reshape(r.shape), B.reshape(r.shape)


def ntk_metric(
    x, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, sigma_v: float = 1.0, *, method: str = "auto"
):
    """(N, d, d) infinite-width NTK metric A I + B x x^T (not a Hessian metric: use
    fastgeom.curvature for its curvature)."""
    x = _prep_x(x)
    A, B = ntk_coefficients((x * x).sum(-1), activation, sigma_w, sigma_b, sigma_v, method=method)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return A[:, None, None] * eye + B[:, None, None] * x[:, :, None] * x[:, None, :]


def ntk_volume_element(
    x, activation="erf", sigma_w: float = 1.0, sigma_b: float = 0.0, sigma_v: float = 1.0, *, method: str = "auto"
):
    """(N,) sqrt(A^(d-1) (A + r B)) (MATH 5)."""
    x = _prep_x(x)
    r = (x * x).sum(-1)
    A, B = ntk_coefficients(r, activation, sigma_w, sigma_b, sigma_v, method=method)
    return torch.sqrt(A ** (x.shape[1] - 1) * (A + r * B))


# ------------------------------------------------------------------------------------------ Amari-Wu


def _prep_sv(x, support_vectors, tau, h):
    sv = torch.as_tensor(support_vectors, dtype=torch.float64)
    if sv.dim() != 2 or sv.shape[1] != x.shape[1]:
        raise ValueError(f"support_vectors must have shape (S, d) = (S, {x.shape[1]}), got {tuple(sv.shape)}")
    if not tau > 0:
        raise ValueError(f"bandwidth tau must be > 0, got {tau!r}")
    h = torch.ones(sv.shape[0], dtype=torch.float64) if h is None else torch.as_tensor(h, dtype=torch.float64)
    if h.shape != (sv.shape[0],):
        raise ValueError(f"h must have shape (S,) = ({sv.shape[0]},), got {tuple(h.shape)}")
    return sv.to(x.device), h.to(x.device)


def conformal_factor(x, support_vectors, tau: float, h=None):
    """c(x) = sum_i h_i exp(-|x - x_i|^2 / (2 tau^2)) (N,) and its gradient (N, d) (MATH 6.1)."""
    x = _prep_x(x)
    sv, h = _prep_sv(x, support_vectors, tau, h)
    diff = x[:, None, :] - sv[None]  # (N, S, d)
    e = h * torch.exp(-(diff * diff).sum(-1) / (2 * tau * tau))  # (N, S)
    return e.sum(-1), -(e[:, :, None] * diff).sum(1) / (tau * tau)


def _rbf(s):
    def k(a, b):
        dd = a - b
        return torch.exp(-(dd * dd).sum() / (2 * s * s))

    return k


def amari_wu_metric(x, support_vectors, tau: float, base="rbf", s: float = 1.0, h=None):
    """(N, d, d) metric of the modified kernel c(x) c(y) K(x, y) (MATH 6.1, general form):
    c^2 g + K(x,x) dc dc^T + c (dc kappa^T + kappa dc^T), kappa = d_y K(x, y)|_{y=x}.

    ``base``: "rbf" (K = exp(-|x-y|^2/(2 s^2))) or a callable k(x, y) -> scalar on single points (d,),
    written with torch ops (it is differentiated by torch.func)."""
    x = _prep_x(x)
    c, dc = conformal_factor(x, support_vectors, tau, h)
    if isinstance(base, str):
        if base != "rbf":
            raise ValueError(f"unknown base kernel {base!r}; use 'rbf' or a callable k(x, y)")
        if not s > 0:
            raise ValueError(f"RBF length scale s must be > 0, got {s!r}")
        k = _rbf(s)
    elif callable(base):
        k = base
    else:
        raise ValueError("base must be 'rbf' or a callable kernel k(x, y) -> scalar")
    Kxx = vmap(lambda a: k(a, a))(x)
    kappa = vmap(lambda a: jacrev(k, argnums=1)(a, a))(x)
    g = vmap(lambda a: jacfwd(jacrev(k, argnums=0), argnums=1)(a, a))(x)
    return (
        c[:, None, None] ** 2 * g
        + Kxx[:, None, None] * dc[:, :, None] * dc[:, None, :]
        + c[:, None, None] * (dc[:, :, None] * kappa[:, None, :] + kappa[:, :, None] * dc[:, None, :])
    )


def amari_wu_volume_element(x, support_vectors, tau: float, base="rbf", s: float = 1.0, h=None):
    """(N,) volume element of the Amari-Wu modified kernel. For base="rbf" the closed form
    (c/s)^d sqrt(1 + s^2 |grad c|^2 / c^2); otherwise sqrt(det) of :func:`amari_wu_metric`."""
    x = _prep_x(x)
    if isinstance(base, str) and base == "rbf":
        if not s > 0:
            raise ValueError(f"RBF length scale s must be > 0, got {s!r}")
        c, dc = conformal_factor(x, support_vectors, tau, h)
        # = (c/s)^d sqrt(1 + s^2 |grad c|^2 / c^2), written without 0/0 far from the support vectors
        return c ** (x.shape[1] - 1) * torch.sqrt(c * c + s * s * (dc * dc).sum(-1)) / s ** x.shape[1]
    return torch.sqrt(torch.linalg.det(amari_wu_metric(x, support_vectors, tau, base, s, h)))
