"""Randomized estimators that need only JVP / VJP products with the Jacobian J (d_out, d_in) per point.

Notation: K is J when d_in <= d_out, else J^T, so K maps R^n -> R^m with n = min(d_in, d_out) <= m,
and logvol(x) = sum_i log s_i(J) = 1/2 tr log(K^T K) (all n singular values must be non-zero).

``logvol``: stochastic Lanczos quadrature (SLQ) driven by **Golub-Kahan bidiagonalisation of K
itself** (not Lanczos on K^T K, which squares the condition number). For a probe z (Rademacher,
|z|^2 = n) and k steps, K V_k = U_k B_k with B_k upper bidiagonal and T_k = B_k^T B_k the Lanczos
tridiagonal of K^T K started at z/|z|. With the SVD B_k = P diag(sigma) W^T, Gauss quadrature gives

    z^T log(K^T K) z  ~=  |z|^2 sum_j W[0, j]^2 log(sigma_j^2),

exact when k = n (the Krylov space is then everything). U and V are kept in float64 and fully
reorthogonalised (twice) against all previous vectors. Hutchinson's estimator averages the probes:
value = mean_i e_i, e_i = 1/2 z_i^T log(K^T K) z_i.

Error bar (``stderr``): the probe spread, s / sqrt(p) scaled by t_{0.975, p-1} / 2 so that
value +- 2 stderr is a 95% Student-t interval, combined in quadrature with a Lanczos truncation
bound: the change of the estimate over the last quadrature step plus its geometric extrapolation
d1 * r / (1 - r), r = d1 / d2 the ratio of the last two changes (Gauss quadrature error for log decays
about geometrically with a rate close to 1 when K is ill-conditioned, so the last change alone
under-estimates what remains). Coverage is measured in
tests/test_randomized.py: over 400 points of a 24 -> 17 MLP, |value - exact| <= 2 stderr at 97%
of points with 6 probes x 6 steps and with 12 x 10 (without the tail term: 91% and 94.5%; the
probe estimates of a quadratic form are skewed, so few probes under-cover; use >= 8 probes).

Common random numbers (``common_random_numbers=True``): every point uses the same probes, so the
probe noise is strongly correlated between nearby points and differences along a path or plane are
much sharper than the absolute values.

``spectrum``: randomized block Krylov (Musco & Musco 2015) on K: V = orth[S, (K^T K) S, ...,
(K^T K)^q S] (n x b(q+1), full float64 reorthogonalisation), then the singular values of K V (the
Rayleigh-Ritz values, lower bounds that converge to the top singular values from below).

Pass counts (one pass = one JVP or one VJP of one vector at one point): logvol p * (2k - 1);
spectrum b * (2q + 1). The exact engine needs n passes: randomized only pays when p * 2k << n.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import checks
from .engine.planner import default_budget, is_oom, saved_bytes_one_point

__all__ = ["logvol", "spectrum", "logvol_probes", "LinearOperator", "passes_logvol", "passes_spectrum"]


class LinearOperator:
    """K (n -> m) of every point of a batch, from the JVPs and VJPs of an engine's pass.

    ``matvec(V (B, p, n)) -> (B, p, m)`` and ``rmatvec(U (B, p, m)) -> (B, p, n)`` take and return
    float64; the network runs in its own dtype. ``passes`` counts single-vector products per point.
    ``null`` (B, n): a known unit null vector of K per point (the sphere target's radial direction
    when K = J^T); K is then restricted to its orthogonal complement (inputs and outputs of
    ``rmatvec`` projected), so the quadrature runs over the n - 1 other singular values.
    """

    def __init__(self, lin, x: torch.Tensor, d_out: int, null: torch.Tensor | None = None):
        self.lin = lin
        self.x = x
        self.B = x.shape[0]
        self.in_shape = x.shape[1:]
        self.d_in = x[0].numel()
        self.d_out = d_out
        self.dtype = x.dtype
        self.out_dtype = lin.out_dtype
        self.transposed = self.d_out < self.d_in  # K = J^T
        self.n = min(self.d_in, self.d_out)
        self.m = max(self.d_in, self.d_out)
        self.null = null
        self.n_eff = self.n - (null is not None)  # dimension of the space K is restricted to
        self.passes = 0

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """V (B, p, n) with its component along ``null`` removed."""
        if self.null is None:
            return V
        u = self.null[:, None, :]
        return V - (V * u).sum(-1, keepdim=True) * u

    def _jvp(self, V: torch.Tensor) -> torch.Tensor:  # (B, p, d_in) -> (B, p, d_out)
        p = V.shape[1]
        tan = V.to(self.dtype).transpose(0, 1).reshape(p, self.B, *self.in_shape)
        cols = self.lin.jvp(tan)
        self.passes += p
        return cols.reshape(p, self.B, self.d_out).transpose(0, 1).to(torch.float64)

    def _vjp(self, U: torch.Tensor) -> torch.Tensor:  # (B, p, d_out) -> (B, p, d_in)
        p = U.shape[1]
        cot = U.to(self.out_dtype).transpose(0, 1).contiguous()
        g = self.lin.vjp(cot)
        self.passes += p
        return g.reshape(p, self.B, self.d_in).transpose(0, 1).to(torch.float64)

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        V = self.project(V)
        return self._vjp(V) if self.transposed else self._jvp(V)

    def rmatvec(self, U: torch.Tensor) -> torch.Tensor:
        return self.project(self._jvp(U) if self.transposed else self._vjp(U))


def pass_factory(fmap, d_out: int):
    """(xb, mode) -> a pass over a point batch: the linearised engine's when the model linearises
    (validated at the first point it sees), else torch.func's (``engine.streamed.AutogradPass``)."""
    from .engine.choice import EngineWarning, strict
    from .engine.linear_net import LinearizeError, validated_linearize
    from .engine.streamed import AutogradPass

    state: dict = {}

    def make(xb, mode):
        if "lin" not in state:
            state["lin"] = None
            if fmap.model is not None and (fmap.layer is None or isinstance(fmap.layer, str)):
                try:
                    state["lin"] = validated_linearize(fmap, xb[:1], d_out)
                except LinearizeError:
                    pass
                except Exception as e:  # noqa: BLE001
                    if is_oom(e) or strict():
                        raise
                    import warnings

                    warnings.warn(
                        f"the linearised engine failed unexpectedly ({type(e).__name__}: {e}); "
                        "method='randomized' uses torch.func's passes",
                        EngineWarning,
                        stacklevel=2,
                    )
        if state["lin"] is not None:
            return state["lin"](xb, mode)
        return AutogradPass(fmap, xb, "reverse")

    return make


def _orth_against(w: torch.Tensor, Q: torch.Tensor | None) -> torch.Tensor:
    """w (N, d) minus its projection on the orthonormal rows of Q (N, j, d); twice ("twice is enough")."""
    if Q is None or Q.shape[1] == 0:
        return w
    for _ in range(2):
        w = w - torch.einsum("nj,njd->nd", torch.einsum("njd,nd->nj", Q, w), Q)
    return w


def _probes(gen: torch.Generator, B: int, p: int, n: int, common: bool, device) -> torch.Tensor:
    """Rademacher probes (B, p, n) float64; one set shared by all points when ``common``."""
    shape = (1 if common else B, p, n)
    z = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)
    return z.expand(B, p, n).to(device)


def _quadrature(alpha: torch.Tensor, beta: torch.Tensor, k: int) -> torch.Tensor:
    """1/2 e_1^T log(T_k) e_1 from the first k Golub-Kahan coefficients; alpha (N, K), beta (N, K)."""
    N = alpha.shape[0]
    Bk = torch.zeros(N, k, k, dtype=torch.float64, device=alpha.device)
    idx = torch.arange(k, device=alpha.device)
    Bk[:, idx, idx] = alpha[:, :k]
    if k > 1:
        Bk[:, idx[:-1], idx[1:]] = beta[:, : k - 1]
    _, sig, Wt = torch.linalg.svd(Bk)
    w0 = Wt[:, :, 0]  # first components of the right singular vectors
    return (w0 * w0 * torch.log(sig)).sum(-1)


TAIL_RATIO_MAX = 0.9


@dataclass
class ProbeEstimates:
    """Per point and probe: e (B, p) = 1/2 z^T log(K^T K) z, and the previous quadrature step's value."""

    e: torch.Tensor
    e_prev: torch.Tensor
    tail: torch.Tensor  # (B, p) extrapolated remaining quadrature error (geometric tail), >= 0
    steps: int
    passes: int


def logvol_probes(op: LinearOperator, z: torch.Tensor, steps: int, breakdown_tol: float = 1e-13) -> ProbeEstimates:
    """Golub-Kahan SLQ for probes z (B, p, n): 1/2 z^T log(K^T K) z per point and probe.

    ``steps`` is capped at n. A breakdown (a new Lanczos vector of relative norm below
    ``breakdown_tol``: an invariant subspace was found, so the quadrature is already exact) stops the
    recursion for that probe; its estimate is frozen at that step. A zero alpha (K maps a new
    direction into the span of the previous images) means a zero singular value: ValueError.
    """
    B, p, n = z.shape
    k = max(1, min(int(steps), op.n_eff))
    N = B * p
    znorm2 = (z * z).sum(-1).reshape(N)
    v = (z / torch.sqrt((z * z).sum(-1, keepdim=True))).reshape(N, n)
    Vs = torch.zeros(N, k, n, dtype=torch.float64, device=z.device)
    Us = torch.zeros(N, k, op.m, dtype=torch.float64, device=z.device)
    alpha = torch.zeros(N, k, dtype=torch.float64, device=z.device)
    beta = torch.zeros(N, k, dtype=torch.float64, device=z.device)
    kdone = torch.full((N,), k, dtype=torch.long, device=z.device)  # steps that count per probe
    alive = torch.ones(N, dtype=torch.bool, device=z.device)
    u_prev = torch.zeros(N, op.m, dtype=torch.float64, device=z.device)
    scale = None
    for j in range(k):
        Vs[:, j] = v
        u = op.matvec(v.reshape(B, p, n)).reshape(N, op.m)
        if j > 0:
            u = u - beta[:, j - 1 : j] * u_prev
        u = _orth_against(u, Us[:, :j])
        a = torch.linalg.vector_norm(u, dim=-1)
        if scale is None:
            scale = torch.where(a > 0, a, torch.ones_like(a))
        if bool((alive & (a <= breakdown_tol * scale)).any()):
            # K v_j in span(K V_{j-1}) means K has a null vector: a zero singular value
            raise ValueError(
                "the Jacobian is rank deficient at some point (Golub-Kahan found a zero singular "
                "value), so its log volume over all min(d_in, d_out) values is -inf; use the exact "
                "methods, which drop zero singular values and report the rank"
            )
        a = torch.where(alive, a, torch.ones_like(a))
        alpha[:, j] = torch.where(alive, a, alpha[:, j])
        u = torch.where(alive[:, None], u / a[:, None], torch.zeros_like(u))
        Us[:, j] = u
        u_prev = u
        if j == k - 1:
            break
        w = op.rmatvec(u.reshape(B, p, op.m)).reshape(N, n) - alpha[:, j : j + 1] * v
        w = _orth_against(w, Vs[:, : j + 1])
        b = torch.linalg.vector_norm(w, dim=-1)
        scale = torch.maximum(scale, a)
        dead = alive & (b <= breakdown_tol * scale)
        kdone = torch.where(dead, torch.full_like(kdone, j + 1), kdone)
        alive &= ~dead
        b = torch.where(alive, b, torch.ones_like(b))
        beta[:, j] = torch.where(alive, b, beta[:, j])
        v = torch.where(alive[:, None], w / b[:, None], torch.zeros_like(w))
        if not bool(alive.any()):
            break
    e = torch.empty(N, dtype=torch.float64, device=z.device)
    e_prev = torch.empty(N, dtype=torch.float64, device=z.device)
    tail = torch.zeros(N, dtype=torch.float64, device=z.device)
    for kk in torch.unique(kdone).tolist():
        sel = (kdone == kk).nonzero().flatten()
        q = _quadrature(alpha[sel], beta[sel], kk)
        if kk < k or kk >= op.n_eff:  # breakdown or Krylov space exhausted: quadrature is exact
            qp = q
        else:
            qp = _quadrature(alpha[sel], beta[sel], kk - 1) if kk > 1 else q
            # geometric tail: changes d1 = |q_k - q_{k-1}|, d2 = |q_{k-1} - q_{k-2}|, ratio r = d1 / d2;
            # the remaining error is about d1 * r / (1 - r) (r capped at TAIL_RATIO_MAX; no ratio at k = 2: r = 1/2)
            d1 = (q - qp).abs()
            if kk > 2:
                d2 = (qp - _quadrature(alpha[sel], beta[sel], kk - 2)).abs()
                r = torch.where(d2 > 0, d1 / torch.where(d2 > 0, d2, torch.ones_like(d2)), torch.zeros_like(d1))
            else:
                r = torch.full_like(d1, 0.5)
            r = r.clamp(0.0, TAIL_RATIO_MAX)
            tail[sel] = znorm2[sel] * d1 * r / (1 - r)
        e[sel] = znorm2[sel] * q
        e_prev[sel] = znorm2[sel] * qp
    return ProbeEstimates(
        e=e.reshape(B, p), e_prev=e_prev.reshape(B, p), tail=tail.reshape(B, p), steps=k, passes=op.passes
    )


def _t975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def combine(est: ProbeEstimates) -> tuple[torch.Tensor, torch.Tensor]:
    """(value (B,), stderr (B,)): Hutchinson mean; stderr = t-scaled probe spread (+) truncation bound."""
    e = est.e
    p = e.shape[1]
    val = e.mean(1)
    if p > 1:
        sd = e.std(1, unbiased=True) / math.sqrt(p) * (_t975(p - 1) / 2.0)
    else:
        sd = torch.full_like(val, float("inf"))
    trunc = (val - est.e_prev.mean(1)).abs() + est.tail.mean(1)
    return val, torch.sqrt(sd * sd + trunc * trunc)


def _check_opts(probes, steps, extra):
    if extra:
        raise TypeError(
            f"unknown randomized option(s) {sorted(extra)}; valid: probes, steps, "
            "common_random_numbers, points_per_batch, budget"
        )
    for name, v in (("probes", probes), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"options['{name}'] must be a positive int, got {v!r}")


def _points_per_batch(fmap, x, per_point_vectors: int, points_per_batch, budget) -> int:
    if points_per_batch is None:
        budget = int(budget or default_budget(x.device))
        act, _ = saved_bytes_one_point(fmap, x[:1].to(fmap.dtype or x.dtype))
        return max(1, budget // max(2 * act * per_point_vectors, 1))
    if isinstance(points_per_batch, bool) or not isinstance(points_per_batch, int) or points_per_batch < 1:
        raise ValueError(f"options['points_per_batch'] must be a positive int, got {points_per_batch!r}")
    return points_per_batch


def _over_batches(fmap, x: torch.Tensor, points: int, make_pass, work, desc: str, progress, on_coupled=None) -> None:
    """work(s, e, lin) over point batches of x, lin = make_pass(x[s:e], "reverse"); an out-of-memory error
    halves the batch and retries. Each batch of more than one point first checks its last point alone
    against its feature inside the batch (``checks.batch_feature_coupled``, before work draws any random
    numbers): on a mismatch that batch and the rest run one point at a time, a ``BatchCouplingWarning``
    names the points and ``on_coupled()`` is called (the ``Geometry`` handle marks its probe coupled)."""
    B = x.shape[0]
    show = (B > 1 and sys.stderr.isatty()) if progress is None else bool(progress)
    bar = tqdm(total=B, desc=desc, unit="pt", disable=not show, leave=False)
    s = 0
    try:
        while s < B:
            e = min(B, s + points)
            try:
                lin = make_pass(x[s:e], "reverse")
                j = checks.batch_feature_coupled(fmap, x[s:e], lin.feature.reshape(e - s, -1)) if e - s > 1 else None
                if j is None:
                    work(s, e, lin)
            except Exception as err:  # noqa: BLE001
                if not is_oom(err) or points == 1:
                    raise
                points = max(1, points // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if j is not None:  # coupled across the batch: this batch and the rest point by point
                checks.warn_coupled_batch(s, e, j, stacklevel=5)  # at the caller of Geometry.logvol / spectrum
                if on_coupled is not None:
                    on_coupled()
                points = 1
                continue
            bar.update(e - s)
            s = e
    finally:
        bar.close()


def _null(fmap, lin, d_in: int, d_out: int):
    """The per-point known null vector of K (B, n), or None (see ``FeatureMap.null_dims``)."""
    if not fmap.null_dims(d_in, d_out):
        return None
    u = lin.feature.reshape(lin.feature.shape[0], -1).to(torch.float64)
    return u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)


def _generator(seed) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def passes_logvol(n: int, probes: int, steps: int) -> int:
    """JVP + VJP passes per point of ``logvol`` (steps capped at n)."""
    k = min(steps, n)
    return probes * (2 * k - 1)


def passes_spectrum(n: int, k: int, oversample: int, iters: int) -> int:
    """Passes per point of ``spectrum``: b (2q + 1) with b = min(n, k + oversample)."""
    b = min(n, k + oversample)
    q = min(iters, max(0, math.ceil(n / b) - 1))
    return b * (2 * q + 1)


def logvol(
    fmap,
    x: torch.Tensor,
    d_in: int,
    d_out: int,
    *,
    seed: int | None = None,
    progress=None,
    probes: int = 8,
    steps: int = 32,
    common_random_numbers: bool = False,
    points_per_batch: int | None = None,
    budget: int | None = None,
    make_pass=None,
    on_coupled=None,
    **extra,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLQ estimate of the log volume element at each point of x (B, *input_shape).

    Options: ``probes`` (Hutchinson probes, >= 2 for an error bar), ``steps`` (Golub-Kahan steps per
    probe, capped at n = min(d_in, d_out)), ``common_random_numbers`` (same probes at every point),
    ``points_per_batch`` / ``budget`` (memory). Returns float64 (value (B,), stderr (B,)); see the
    module docstring for the error bar. Needs J of full rank n at every point. ``on_coupled``: called
    when a point batch turns out coupled (``_over_batches``; that batch and the rest run point by point).
    """
    _check_opts(probes, steps, extra)
    B = x.shape[0]
    n = min(d_in, d_out)
    dev = x.device
    if B == 0:
        z0 = torch.zeros(0, dtype=torch.float64, device=dev)
        return z0, z0.clone()
    gen = _generator(seed)
    z = _probes(gen, B, probes, n, bool(common_random_numbers), dev)
    val = torch.empty(B, dtype=torch.float64, device=dev)
    err = torch.empty(B, dtype=torch.float64, device=dev)
    make_pass = make_pass or pass_factory(fmap, d_out)

    def work(s, e, lin):
        op = LinearOperator(lin, x[s:e], d_out, _null(fmap, lin, d_in, d_out))
        est = logvol_probes(op, op.project(z[s:e]), steps)
        val[s:e], err[s:e] = combine(est)

    points = _points_per_batch(fmap, x, probes, points_per_batch, budget)
    _over_batches(fmap, x, points, make_pass, work, "logvol (randomized)", progress, on_coupled)
    return val, err


def spectrum(
    fmap,
    x: torch.Tensor,
    d_in: int,
    d_out: int,
    *,
    k: int,
    seed: int | None = None,
    progress=None,
    oversample: int = 8,
    iters: int = 4,
    points_per_batch: int | None = None,
    budget: int | None = None,
    make_pass=None,
    on_coupled=None,
    **extra,
) -> torch.Tensor:
    """Top-k singular values (B, k), descending, by randomized block Krylov with q = ``iters`` iterations
    on a block of b = k + ``oversample`` Gaussian vectors (float64, fully reorthogonalised); ``on_coupled`` as
    in ``logvol``."""
    if extra:
        raise TypeError(
            f"unknown randomized spectrum option(s) {sorted(extra)}; valid: oversample, iters, points_per_batch, budget"
        )
    for name, v in (("oversample", oversample), ("iters", iters)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"options['{name}'] must be a non-negative int, got {v!r}")
    B = x.shape[0]
    n = min(d_in, d_out)
    if k > n:
        raise ValueError(f"k={k} exceeds min(d_in, d_out) = {n}, the number of singular values")
    dev = x.device
    if B == 0:
        return torch.zeros(0, k, dtype=torch.float64, device=dev)
    b = min(n, k + oversample)
    gen = _generator(seed)
    out = torch.empty(B, k, dtype=torch.float64, device=dev)
    make_pass = make_pass or pass_factory(fmap, d_out)

    def work(s, e, lin):
        op = LinearOperator(lin, x[s:e], d_out, _null(fmap, lin, d_in, d_out))
        Bb = e - s
        S = op.project(torch.randn(Bb, b, n, generator=gen, dtype=torch.float64).to(dev))
        V = torch.linalg.qr(S.mT).Q.mT  # (Bb, b, n) orthonormal rows
        Vall, Zall = [V], []
        for _it in range(iters):
            if sum(t.shape[1] for t in Vall) >= n:
                break
            Z = op.matvec(V)  # (Bb, b, m)
            Zall.append(Z)
            W = op.rmatvec(Z)  # (Bb, b, n) = K^T K V
            Q = torch.cat(Vall, 1)
            W = W[:, : n - Q.shape[1]]
            for _ in range(2):  # reorthogonalise, then orthonormalise the block; twice is enough
                W = W - (W @ Q.mT) @ Q
                W = torch.linalg.qr(W.mT).Q.mT
            V = W
            Vall.append(V)
        Zall.append(op.matvec(V))
        KV = torch.cat(Zall, 1)  # (Bb, r, m) = (K V)^T, V orthonormal
        out[s:e] = torch.linalg.svdvals(KV)[:, :k]

    points = _points_per_batch(fmap, x, b, points_per_batch, budget)
    _over_batches(fmap, x, points, make_pass, work, "spectrum (randomized)", progress, on_coupled)
    return out
