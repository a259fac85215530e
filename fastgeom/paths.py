"""Feature-space lengths of input paths and discrete geodesics of the pullback metric (MATH.md 12.3-12.4).

* ``path_length``: L = sum over the segments of a polyline of int_0^1 |J(p_k + t dp_k) dp_k| dt, each
  integral by adaptive Gauss-Kronrod (7/15 points) to a relative error estimate <= ``rtol``; every
  round evaluates the nodes of all open intervals of all segments in one batched JVP pass.
* ``geodesic``: the polyline with fixed endpoints minimising the discrete energy
  E = n sum_k |phi(p_{k+1}) - phi(p_k)|^2 (L-BFGS from the straight path). For an immersion it converges
  to the shortest path as n grows. For a submersion (d_out < d_in) phi is constant along the fibres
  (directions in the null space of J), so moving interior points along them leaves E unchanged: the
  minimiser is not unique, and the result is the one L-BFGS reaches from the straight path. Its
  energy and length are those of the shortest image curve it found; the input path itself is not
  a canonical object.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.func import jvp

from .diagnostics import PrecisionWarning
from .diagnostics import fmt_points as _fmt_points
from .engine.planner import default_budget, is_oom, saved_bytes_one_point
from .features import FeatureMap, eval_mode, no_tf32
from .geometry import check_points

__all__ = ["path_length", "geodesic", "path_length_fmap", "geodesic_fmap", "GeodesicResult"]

# Gauss-Kronrod 7/15 on [-1, 1] (the constants of QUADPACK's qk15)
_XK = (
    0.991455371120812639206854697526329,
    0.949107912342758524526189684047851,
    0.864864423359769072789712788640926,
    0.741531185599394439863864773280788,
    0.586087235467691130294144838258730,
    0.405845151377397166906606412076961,
    0.207784955007898467600689403773245,
    0.0,
)
_WK = (
    0.022935322010529224963732008058970,
    0.063092092629978553290700663189204,
    0.104790010322250183839876322541518,
    0.140653259715525918745189590510238,
    0.169004726639267902826583426598550,
    0.190350578064785409913256402421014,
    0.204432940075298892414161999234649,
    0.209482141084727828012999174891714,
)
_WG = (
    0.129484966168869693270611432679082,
    0.279705391489276667901467771423780,
    0.381830050505118944950369775488975,
    0.417959183673469387755102040816327,
)


def _rule(device):
    """Nodes (15,), Kronrod weights (15,), Gauss weights on the same nodes (15,; zero off the 7 Gauss nodes)."""
    x = torch.tensor(_XK[:-1] + tuple(-v for v in reversed(_XK[:-1])) + (0.0,), dtype=torch.float64)
    wk = torch.tensor(_WK[:-1] + tuple(reversed(_WK[:-1])) + (_WK[-1],), dtype=torch.float64)
    wg = torch.zeros(15, dtype=torch.float64)
    gauss = [1, 3, 5, 12, 10, 8, 14]  # x1, x3, x5, -x1, -x3, -x5, 0 in the order above
    wg[gauss] = torch.tensor(_WG[:3] + _WG[:3] + (_WG[3],), dtype=torch.float64)
    return x.to(device), wk.to(device), wg.to(device)


def _extrapolation(x: torch.Tensor) -> torch.Tensor:
    """(2, len(x)) Lagrange weights of the nodes x at -1 and +1 (Lebesgue sum 3.8 for the 15 Kronrod nodes)."""
    rows = []
    for y in (-1.0, 1.0):
        rows.append(
            torch.stack(
                [
                    torch.prod((y - torch.cat([x[:j], x[j + 1 :]])) / (x[j] - torch.cat([x[:j], x[j + 1 :]])))
                    for j in range(x.numel())
                ]
            )
        )
    return torch.stack(rows)


def _jvp_norms(fmap, X: torch.Tensor, D: torch.Tensor, rows: list) -> torch.Tensor:
    """|J(X_i) D_i| (M,) float64 for X, D (M, *in) in passes of rows[0] points (halved on OOM)."""
    dt = fmap.dtype or X.dtype
    out = torch.empty(X.shape[0], dtype=torch.float64, device=X.device)
    s = 0
    while s < X.shape[0]:
        e = min(X.shape[0], s + rows[0])
        try:
            _, t = jvp(fmap, (X[s:e].to(dt),), (D[s:e].to(dt),))  # type: ignore[misc]
        except Exception as err:  # noqa: BLE001
            if not is_oom(err) or rows[0] == 1:
                raise
            rows[0] = max(1, rows[0] // 2)
            continue
        out[s:e] = torch.linalg.vector_norm(t.to(torch.float64).reshape(e - s, -1), dim=1)
        s = e
    return out


def _rows(fmap, x1: torch.Tensor, budget) -> int:
    act, biggest = saved_bytes_one_point(fmap, x1)
    n = max(1, int(budget or default_budget(x1.device)) // (2 * max(act // 4, 4 * biggest, 1)))
    return min(n, 1024) if x1.device.type == "cpu" else n


def check_path(path, name="path") -> torch.Tensor:
    if not isinstance(path, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (T, *input_shape), got {type(path).__name__}")
    check_points(path)
    if path.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 points (T, *input_shape), got shape {tuple(path.shape)}")
    return path


def path_length_fmap(
    fmap: FeatureMap,
    path: torch.Tensor,
    *,
    per_segment: bool = False,
    rtol: float = 1e-8,
    pieces: int = 4,
    max_rounds: int = 60,
    budget: int | None = None,
):
    """Feature-space length of the polyline `path` (T, *in): float64 scalar, or (T-1,) segment lengths.

    Each segment starts as `pieces` intervals. The error estimate controls what the nodes resolve: a
    feature of the integrand narrower than the node spacing (about 1 / (30 pieces) of a segment at the
    start), such as a short linear piece of a ReLU network, can be missed entirely."""
    check_path(path)
    if not (isinstance(rtol, float) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a float in (0, 1), got {rtol!r}")
    dev = path.device
    compute_dtype = fmap.dtype or path.dtype
    floor = 50 * torch.finfo(compute_dtype).eps
    if rtol < floor:
        warnings.warn(
            f"the network runs in {compute_dtype}, whose rounding limits the quadrature to about {floor:.1g} "
            f"relative, above rtol={rtol:g}; pass dtype=torch.float64 for tighter lengths",
            PrecisionWarning,
            stacklevel=3,
        )
        rtol = floor
    P = path.to(torch.float64)
    D = P[1:] - P[:-1]
    S = D.shape[0]
    xk, wk, wg = _rule(dev)
    if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"pieces must be a positive int (initial intervals per segment), got {pieces!r}")
    seg = torch.arange(S, device=dev)
    seg = seg[D.reshape(S, -1).abs().amax(1) > 0].repeat_interleave(pieces)  # zero-length segments: length 0
    lo = torch.arange(pieces, dtype=torch.float64, device=dev).repeat(seg.numel() // pieces) / pieces
    hi = lo + 1.0 / pieces
    done = torch.zeros(S, dtype=torch.float64, device=dev)
    rows = [_rows(fmap, P[:1].to(compute_dtype), budget)]
    shape = (1,) * (P.dim() - 1)
    nodes = torch.cat([xk, xk.new_tensor([-1.0, 1.0])])
    ext = _extrapolation(xk)  # (2, 15): the 15-node interpolating polynomial at -1 and +1
    gap = 1 - float(xk[0])  # the unsampled gap at each end, in units of the half width

    def gk(seg, lo, hi):
        """Kronrod, Gauss estimates on [lo, hi] of each segment's parameter interval, and the error a jump
        of the integrand hidden in the end gaps (between an end and its outermost node) can cause."""
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        t = (mid[:, None] + half[:, None] * nodes).reshape(-1)  # (M*17,)
        sg = seg.repeat_interleave(17)
        f = _jvp_norms(fmap, P[sg] + t.reshape(-1, *shape) * D[sg], D[sg], rows).reshape(-1, 17)
        fi = f[:, :15]
        edge = gap * half * ((fi @ ext.T) - f[:, 15:]).abs().sum(1)
        return half * (fi @ wk), half * (fi @ wg), edge

    with eval_mode(fmap.model), no_tf32(), torch.no_grad():
        kval = gk(seg, lo, hi)[0]
        for _ in range(max_rounds):
            if seg.numel() == 0:
                break
            # both halves of every open interval; the error of their sum is estimated by the embedded Gauss
            # rules and against the parent's Kronrod value (either alone can vanish at a kink), plus the
            # end-gap term (a jump between an end and the outermost node is invisible to both)
            mid = (lo + hi) / 2
            k2, g2, e2 = gk(seg.repeat(2), torch.cat([lo, mid]), torch.cat([mid, hi]))
            M = seg.numel()
            kl, kr = k2[:M], k2[M:]
            err = torch.maximum((kl + kr - kval).abs(), (kl - g2[:M]).abs() + (kr - g2[M:]).abs()) + e2[:M] + e2[M:]
            total = done.index_add(0, seg, kl + kr)
            ok = (err <= rtol * total[seg] * (hi - lo)) | ((hi - lo) < 1e-13)
            done = done.index_add(0, seg[ok], (kl + kr)[ok])
            keep = ~ok
            seg, lo, hi = seg[keep].repeat(2), torch.cat([lo[keep], mid[keep]]), torch.cat([mid[keep], hi[keep]])
            kval = torch.cat([kl[keep], kr[keep]])
        else:
            if seg.numel():
                bad = sorted(set(seg.tolist()))
                warnings.warn(
                    f"path_length: the quadrature of segment(s) {_fmt_points(bad)} did not reach rtol={rtol:g} "
                    f"in {max_rounds} rounds of bisection (a non-smooth integrand?); their last estimates "
                    "are used",
                    PrecisionWarning,
                    stacklevel=3,
                )
                done = done.index_add(0, seg, kval)
    return done if per_segment else done.sum()


@dataclass
class GeodesicResult:
    """A discrete geodesic: path (n+1, *in) float64 with the given endpoints; length (float64 scalar, by
    ``path_length`` of the polyline); energy: the discrete energy n sum_k |phi(p_{k+1}) - phi(p_k)|^2 at the
    result; straight_energy: the same for the straight path; converged: L-BFGS stopped on its tolerances
    (not on max_iter); iterations: L-BFGS iterations."""

    path: torch.Tensor
    length: torch.Tensor
    energy: float
    straight_energy: float
    converged: bool
    iterations: int


def geodesic_fmap(
    fmap: FeatureMap,
    x0: torch.Tensor,
    x1: torch.Tensor,
    *,
    n: int = 32,
    max_iter: int = 500,
    tol: float = 1e-10,
    rtol: float = 1e-8,
    budget: int | None = None,
) -> GeodesicResult:
    """Discrete geodesic from x0 to x1 (each (*in)) with n segments; see the module docstring."""
    for name, p in (("x0", x0), ("x1", x1)):
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor of shape input_shape")
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape (input_shape), got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (number of segments), got {n!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    a, b = x0.to(torch.float64), x1.to(torch.float64)
    check_points(torch.stack([a, b]))
    dt = fmap.dtype or x0.dtype
    t = torch.linspace(0, 1, n + 1, dtype=torch.float64, device=a.device).reshape(-1, *(1,) * a.dim())
    straight = a + t * (b - a)
    scale = float(torch.linalg.vector_norm(b - a)) or 1.0
    with eval_mode(fmap.model), no_tf32():
        with torch.no_grad():
            ends = fmap(torch.stack([a, b]).to(dt)).to(torch.float64)

        def energy(Y):
            inner = fmap((straight[1:-1] + scale * Y).to(dt)).to(torch.float64)
            pts = torch.cat([ends[:1], inner, ends[1:]])
            return n * ((pts[1:] - pts[:-1]) ** 2).sum()

        Y = torch.zeros_like(straight[1:-1], requires_grad=True)
        iters, converged = 0, True
        if n > 1:
            with torch.no_grad():
                E0 = float(energy(Y))
            if E0 > 0:
                opt = torch.optim.LBFGS(
                    [Y],
                    lr=1,
                    max_iter=max_iter,
                    history_size=20,
                    line_search_fn="strong_wolfe",
                    tolerance_grad=tol,
                    tolerance_change=tol * 1e-3,
                )

                def closure():
                    opt.zero_grad()
                    E = energy(Y) / E0
                    E.backward()
                    return E

                opt.step(closure)
                iters = int(opt.state[Y]["n_iter"])
                converged = iters < max_iter
        else:
            E0 = float(energy(Y))
        with torch.no_grad():
            E = float(energy(Y))
            path = torch.cat([a[None], straight[1:-1] + scale * Y.detach(), b[None]])
    length = path_length_fmap(fmap, path, rtol=rtol, budget=budget)
    return GeodesicResult(path=path, length=length, energy=E, straight_energy=E0, converged=converged, iterations=iters)


def path_length(
    model,
    path: torch.Tensor,
    layer=None,
    *,
    pool=None,
    target: str = "euclidean",
    dtype: torch.dtype | None = None,
    per_segment: bool = False,
    rtol: float = 1e-8,
    pieces: int = 4,
    budget: int | None = None,
):
    """Feature-space length of the polyline through `path` ``Tensor[T, *input_shape]``: float64 scalar
    sum_k int_0^1 |J(p_k + t dp_k) dp_k| dt, or the ``Tensor[T-1]`` segment lengths with ``per_segment``.

    Adaptive Gauss-Kronrod per segment to a relative error estimate <= ``rtol`` (floored at the rounding level
    of a float32 network, with a PrecisionWarning), starting from `pieces` intervals per segment (features of
    the integrand narrower than the node spacing, like short linear pieces of a ReLU net, can be missed).
    model, layer, pool, target, dtype as in ``fastgeom.logvol``.
    """
    from .geometry import Geometry

    return Geometry(model, layer, pool=pool, target=target, dtype=dtype, budget=budget).path_length(
        path, per_segment=per_segment, rtol=rtol, pieces=pieces
    )


def geodesic(
    model,
    x0: torch.Tensor,
    x1: torch.Tensor,
    layer=None,
    *,
    n: int = 32,
    pool=None,
    target: str = "euclidean",
    dtype: torch.dtype | None = None,
    max_iter: int = 500,
    tol: float = 1e-10,
    rtol: float = 1e-8,
    budget: int | None = None,
) -> GeodesicResult:
    """Discrete geodesic of the pullback metric between x0 and x1 (each ``Tensor[*input_shape]``).

    Minimises E = n sum_k |phi(p_{k+1}) - phi(p_k)|^2 over the n - 1 interior points with L-BFGS
    (strong Wolfe line search, gradient tolerance ``tol`` on E normalised by the straight path's energy),
    starting from the straight path; endpoints fixed. For a submersion the minimiser is not unique (the
    energy is flat along the fibres of phi), see ``fastgeom.paths``. Returns a ``GeodesicResult``.
    """
    from .geometry import Geometry

    return Geometry(model, layer, pool=pool, target=target, dtype=dtype, budget=budget).geodesic(
        x0, x1, n=n, max_iter=max_iter, tol=tol, rtol=rtol
    )
