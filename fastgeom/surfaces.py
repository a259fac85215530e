"""Curvature of deep feature maps by Gauss's equation (MATH.md 12): no metric derivatives, no Christoffels.

For tangent directions u_a at x, T = [d_{u_a} phi] (n, k) and H_ab = d_{u_a} d_{u_b} phi (n,) come from
second-order forward mode (a JVP of a JVP, vmapped over direction pairs, batched over points). The
normal parts N_ab = H_ab - Q Q^T H_ab use Q of a float64 QR of T, so the tangent part of the second
derivatives, which carries the metric's derivatives, never enters.

* ``gaussian_curvature``: K of the surface (a, b) -> phi(x + a u + b v) at (0, 0),
  K = (<N_uu, N_vv> - |N_uv|^2) / det g. Any feature map whose plane image has rank 2 (submersions too).
* ``scalar_curvature``: Ricci scalar of the full pullback metric of an immersion (n >= d, rank d),
  R = g^{ac} g^{bd} (<N_ac, N_bd> - <N_ab, N_cd>), evaluated in the orthonormal frame T R^{-1}
  as R = |sum_i N~_ii|^2 - sum_ij |N~_ij|^2.

Conventions (MATH 1): round sphere of radius r: K = 1/r^2, R = 2/r^2; in 2-D R = 2K. The network runs
in its dtype (or ``dtype=``); everything after the passes is float64. Points whose tangent frame has
rank below k (at the rounding level of the network dtype) are NaN and named in a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.func import jvp, vmap
from tqdm.auto import tqdm

from . import checks
from .diagnostics import RankDeficiencyWarning
from .diagnostics import fmt_points as _fmt_points
from .engine.choice import EngineWarning, strict
from .engine.jet_net import JetGraph, validated_jet
from .engine.linear_net import LinearizeError
from .engine.planner import default_budget, is_oom, saved_bytes_one_point
from .features import FeatureMap, eval_mode, no_tf32
from .geometry import _want_progress, check_points

__all__ = [
    "gaussian_curvature",
    "scalar_curvature",
    "gaussian_curvature_fmap",
    "scalar_curvature_fmap",
    "second_derivatives",
    "plane_directions",
]

# Tests set this to a callable(stage: str) that may raise, to inject faults such as an OOM.
fault_injector: Callable[[str], None] | None = None
# (pair x point) rows per vmapped pass on CPU: small nets are overhead-bound (256 -> 2048: 2.9x on an 8-32-32-19 MLP)
CPU_MAX_ROWS = 2048


def _nested(fmap, xb: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """(phi, d_a phi, d_b d_a phi) at xb (P, *in) along a, b (P, *in): a JVP of a JVP."""

    def inner(y):
        return jvp(fmap, (y,), (a,))

    (phi, phi_a), (_, phi_ab) = jvp(inner, (xb,), (b,))  # type: ignore[misc]
    return phi, phi_a, phi_ab


def _plan_rows(
    fmap,
    x: torch.Tensor,
    n_pairs: int,
    d_out: int,
    chunk_size,
    budget,
    streams: int = 3,
    extra: int = 0,
    saved: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """(pairs per pass, points per batch) within `budget` bytes.

    A (pair, point) row keeps `streams` tangent streams of the network alive (three for a nested JVP, one
    for a jet row); each is counted, like the exact planner, as a quarter of the bytes autograd saves for
    one point (at least four of its largest activations), plus the row's two float64 outputs. ``extra``:
    rows per point besides the pairs (the jet's first-order rows); ``saved``: (bytes, largest) of
    ``saved_bytes_one_point`` when known."""
    budget = int(budget or default_budget(x.device))
    act, biggest = saved_bytes_one_point(fmap, x[:1]) if saved is None else saved
    row = streams * max(act // 4, 4 * biggest, 1) + 2 * d_out * 8
    rows = max(1, (budget - act) // row)
    if x.device.type == "cpu":
        rows = min(rows, CPU_MAX_ROWS)
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int (direction pairs per pass), got {chunk_size!r}")
        pairs = min(chunk_size, n_pairs)
    else:
        pairs = max(1, min(n_pairs, rows - extra))
    points = max(1, min(x.shape[0], rows // (pairs + extra)))
    return pairs, points


def _full_basis(fmap, xb: torch.Tensor, E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phi (Pb, n), J (d, Pb, n), H (d, d, Pb, n)) along the basis E (d, Pb, *in): a JVP (vmapped over the
    basis) of the vmapped JVPs, so the d first-order streams are shared by all d^2 second-order ones ((1 + d)^2
    work units against 1 + 3 d (d + 1) / 2 for the pair layout; 26 vs 35 ms for an 8-256-256-19 tanh MLP at 16
    points). phi is the pass's own primal, an auxiliary output (no extra pass)."""

    def inner(y):
        phi, J = vmap(lambda a: jvp(fmap, (y,), (a,)))(E)
        return J, phi[0]

    J, H, phi = vmap(lambda b: jvp(inner, (xb,), (b,), has_aux=True))(E)  # type: ignore[misc]  # J, phi come out expanded over b (they do not depend on it)
    return phi[0], J[0], H


def second_derivatives(
    fmap,
    xb: torch.Tensor,
    A: torch.Tensor,
    Bt: torch.Tensor,
    pairs: int,
    state: dict | None = None,
    basis=None,
    jet: JetGraph | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (d_a phi, d_a d_b phi), each (P, Pb, d_out), at xb (Pb, *in) for direction pairs
    A, Bt (P, Pb, *in), `pairs` pairs per vmapped pass; an out-of-memory error halves the pass
    (``state["pairs"]`` keeps the reduced size) and retries. ``basis=(E, ia, ib)``: the pairs are
    (E[ia], E[ib]) of directions E (k, Pb, *in); with a validated ``jet`` (``engine.jet_net``) they come
    from its second-order forward pass (`pairs` pairs and all k first-order rows per pass), else, when
    all of them fit in one pass, from the shared-first-order layout (``_full_basis``), on OOM from the
    pair layout. ``state["feature"]`` is set to the passes' own features phi (Pb, d_out) at xb (compute
    dtype), for the batch-coupling check of ``_batches``."""
    P = A.shape[0]
    state = state if state is not None else {}
    state.setdefault("pairs", pairs)
    xb = xb.to(fmap.dtype) if fmap.dtype is not None else xb
    if basis is not None and jet is not None:
        return _jet_pairs(jet, xb, basis, state)
    A, Bt = A.to(xb.dtype), Bt.to(xb.dtype)
    if basis is not None and state["pairs"] >= P:
        E, ia, ib = basis
        try:
            if fault_injector is not None:
                fault_injector("pass")
            phi, J, H = _full_basis(fmap, xb, E.to(xb.dtype))
            state["feature"] = phi.reshape(xb.shape[0], -1)
            n = xb.shape[0]
            return (J[ia].reshape(P, n, -1).to(torch.float64), H[ib, ia].reshape(P, n, -1).to(torch.float64))
        except Exception as err:  # noqa: BLE001
            if not is_oom(err):
                raise
            state["pairs"] = max(1, P // 2)
            if xb.device.type == "cuda":
                torch.cuda.empty_cache()
    f = vmap(lambda a, b: _nested(fmap, xb, a, b))

    def run(s, e):
        phi, pa, pab = f(A[s:e], Bt[s:e])
        return phi[0], pa, pab  # phi comes out expanded over the pairs

    return _in_pair_chunks(xb, P, state, run)


def _in_pair_chunks(xb: torch.Tensor, P: int, state: dict, run) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) float64 (P, n, out) from ``run(s, e) -> (phi, first, second)`` over chunks of
    ``state["pairs"]`` pairs, halved on out-of-memory (down to one); ``state["feature"]`` = phi (n, out)."""
    n = xb.shape[0]
    first, second = [], []
    s = 0
    while s < P:
        e = min(P, s + state["pairs"])
        try:
            if fault_injector is not None:
                fault_injector("pass")
            phi, a, b = run(s, e)
        except Exception as err:  # noqa: BLE001
            if not is_oom(err) or state["pairs"] == 1:
                raise
            state["pairs"] = max(1, state["pairs"] // 2)
            if xb.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        first.append(a.reshape(e - s, n, -1).to(torch.float64))
        second.append(b.reshape(e - s, n, -1).to(torch.float64))
        state["feature"] = phi.reshape(n, -1)
        s = e
    return torch.cat(first), torch.cat(second)


def _jet_pairs(jet: JetGraph, xb: torch.Tensor, basis, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """second_derivatives by the jet pass, ``state["pairs"]`` pairs per pass, halved on out-of-memory."""
    E, ia, ib = basis
    E = E.to(xb.dtype)

    def run(s, e):
        phi, J, H = jet.jet(xb, E, ia[s:e], ib[s:e])
        return phi, J[ia[s:e]], H

    return _in_pair_chunks(xb, ia.numel(), state, run)


def jet_graph(fmap, x: torch.Tensor, d_out: int) -> JetGraph | None:
    """A ``JetGraph`` of fmap validated at x's first point (``engine.jet_net.validated_jet``), or None: for a
    callable feature map, a model torch.fx cannot trace or whose trace fails the check (``LinearizeError``,
    quiet), or, with a warning (an error under ``FASTGEOM_STRICT=1``), any other failure of the jet pass.
    Call it inside ``eval_mode(fmap.model)``."""
    if fmap.model is None or not (fmap.layer is None or isinstance(fmap.layer, str)) or x.shape[0] == 0:
        return None
    try:
        return validated_jet(fmap, x, d_out)
    except LinearizeError:
        return None
    except Exception as e:  # noqa: BLE001 - a bug in the fast path: loud, then the nested-JVP route
        if is_oom(e) or strict():
            raise
        warnings.warn(
            f"the jet (second-order forward) pass failed unexpectedly ({type(e).__name__}: {e}); using "
            "nested JVPs (exact, slower). Set FASTGEOM_STRICT=1 to raise instead.",
            EngineWarning,
            stacklevel=3,
        )
        return None


def _resolve_jet(jet, fmap, x, d_out) -> JetGraph | None:
    """The jet argument of the curvature functions: None -> build one (``jet_graph``), False -> none, a
    callable (the ``Geometry`` handle's cache) -> what it returns, a ``JetGraph`` -> itself."""
    if jet is None:
        return jet_graph(fmap, x, d_out)
    if callable(jet) and not isinstance(jet, JetGraph):
        jet = jet()
    return jet or None


def _batches(
    fmap,
    x,
    pair_fn,
    n_pairs,
    d_out,
    chunk_size,
    budget,
    progress,
    desc,
    max_points=None,
    basis_fn=None,
    jet=None,
    on_coupled=None,
):
    """Yield (slice, first (P, Pb, n), second (P, Pb, n)) over point batches; OOM halves pairs, then points.

    Each batch of more than one point checks its last point alone against the passes' feature of it inside
    the batch (``checks.batch_feature_coupled``, one single-point forward): on a mismatch the batch is not
    yielded, it and the rest are recomputed one point at a time, a ``BatchCouplingWarning`` names the
    points and ``on_coupled()`` is called (the ``Geometry`` handle marks its probe coupled)."""
    B = x.shape[0]
    if jet is not None:
        k = basis_fn(slice(0, 1))[0].shape[0]
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in jet.saved:  # the planner's forward pass at one point, once per input shape
            jet.saved[key] = saved_bytes_one_point(fmap, x[:1])
        pairs, points = _plan_rows(fmap, x, n_pairs, d_out, chunk_size, budget, 1, k, jet.saved[key])
    else:
        pairs, points = _plan_rows(fmap, x, n_pairs, d_out, chunk_size, budget)
    points = min(points, max_points or points)
    state = {"pairs": pairs}
    bar = tqdm(total=B, desc=desc, unit="pt", disable=not _want_progress(progress, B), leave=False)
    try:
        s = 0
        while s < B:
            e = min(B, s + points)
            A, Bt = pair_fn(slice(s, e))
            state.pop("feature", None)
            try:
                out = second_derivatives(
                    fmap,
                    x[s:e],
                    A,
                    Bt,
                    state["pairs"],
                    state,
                    None if basis_fn is None else basis_fn(slice(s, e)),
                    jet,
                )
            except Exception as err:  # noqa: BLE001
                if is_oom(err) and points > 1:
                    points = max(1, points // 2)
                    continue
                if is_oom(err):
                    raise MemoryError(
                        f"out of memory even at 1 point and 1 direction pair (budget "
                        f"{(budget or default_budget(x.device)) / 2**20:.0f} MiB); use a device with "
                        "more memory or a smaller dtype"
                    ) from err
                raise
            feat = state.pop("feature")  # every route of second_derivatives sets it
            if e - s > 1:
                xb = x[s:e].to(fmap.dtype) if fmap.dtype is not None else x[s:e]
                j = checks.batch_feature_coupled(fmap, xb, feat)
                if j is not None:  # coupled across the batch: this batch and the rest point by point
                    checks.warn_coupled_batch(s, e, j, stacklevel=4)
                    if on_coupled is not None:
                        on_coupled()
                    points = 1
                    continue
            yield slice(s, e), *out
            bar.update(e - s)
            s = e
    finally:
        bar.close()


def _rank_ok(R: torch.Tensor, T: torch.Tensor, compute_dtype) -> torch.Tensor:
    """(Pb,) True where the float64 QR factor R (Pb, k, k) of T (Pb, n, k) has full rank k, i.e.
    every |R_ii| above the rounding level max(n, k) * eps(compute dtype) * max column norm of T."""
    n, k = T.shape[-2], T.shape[-1]
    eps = torch.finfo(compute_dtype).eps
    scale = torch.linalg.vector_norm(T, dim=-2).amax(dim=-1)
    diag = R.diagonal(dim1=-2, dim2=-1).abs()
    return (diag > max(n, k) * eps * scale[:, None]).all(dim=-1) & (scale > 0)


def _normal(H: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Normal parts of H (Pb, m, n) against the orthonormal tangent basis Q (Pb, n, k), projected twice
    (the second pass removes what rounding of the first leaves in span Q)."""
    for _ in range(2):
        H = H - (H @ Q) @ Q.mT
    return H


def _warn_nan(bad: list[int], k: int, what: str) -> None:
    if bad:
        warnings.warn(
            f"{len(bad)} point(s) have a tangent frame of rank below {k} (at the rounding level of the "
            f"network dtype), so {what} is undefined there and set to NaN: {_fmt_points(bad)}. Use "
            "dtype=torch.float64, or other points/directions.",
            RankDeficiencyWarning,
            stacklevel=3,
        )


def _directions(w, x: torch.Tensor, name: str) -> torch.Tensor:
    """u or v as (B, *input_shape) float64 (a shared (*input_shape) direction is expanded)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape input_shape {tuple(x.shape[1:])} or "
            f"(B, *input_shape) {tuple(x.shape)}, got {type(w).__name__}"
        )
    if not w.is_floating_point():
        raise TypeError(f"{name} has dtype {w.dtype}; directions must be floating point")
    if tuple(w.shape) == tuple(x.shape[1:]):
        w = w.expand(x.shape)
    elif tuple(w.shape) != tuple(x.shape):
        raise ValueError(
            f"{name} has shape {tuple(w.shape)}, but x is {tuple(x.shape)}: pass one direction of "
            f"shape {tuple(x.shape[1:])} shared by all points, or one per point of shape {tuple(x.shape)}"
        )
    if x.shape[0] and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return w.to(device=x.device, dtype=torch.float64)


def _check_plane(u: torch.Tensor, v: torch.Tensor) -> None:
    """ValueError naming the points where u and v are (numerically) parallel or zero."""
    if u.shape[0] == 0:
        return
    U, V = u.reshape(u.shape[0], -1), v.reshape(v.shape[0], -1)
    nu, nv = torch.linalg.vector_norm(U, dim=1), torch.linalg.vector_norm(V, dim=1)
    uh = U / nu.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    resid = torch.linalg.vector_norm(V - (uh * V).sum(1, keepdim=True) * uh, dim=1)  # |v_perp|, no cancellation
    bad = ((nu == 0) | (nv == 0) | (resid <= 1e-12 * nv)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"u and v do not span a plane (one is zero or they are parallel) at point(s) "
            f"{_fmt_points(bad)}; pass two linearly independent directions"
        )


def gaussian_curvature_fmap(
    fmap: FeatureMap,
    x: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    return_metric: bool = False,
    chunk_size: int | None = None,
    budget: int | None = None,
    progress: bool | None = None,
    max_points: int | None = None,
    jet: JetGraph | bool | Callable[[], JetGraph | bool] | None = None,
    on_coupled: Callable[[], None] | None = None,
):
    """K (B,) float64 of the plane surfaces (a, b) -> fmap(x + a u + b v) at x (B, *in); u, v (*in) or
    (B, *in). With ``return_metric`` also g (B, 2, 2). ``chunk_size``: direction pairs per pass (<= 3);
    ``max_points``: points per batch at most (1 for a model that couples the points of a batch); a batch found
    coupled (``_batches``) sends it and the rest point by point and calls ``on_coupled()``.
    ``jet``: None builds the validated jet pass where the model traces (``jet_graph``), False uses
    nested JVPs, a ``JetGraph`` (validated) is used as it is."""
    check_points(x)
    u, v = _directions(u, x, "u"), _directions(v, x, "v")
    _check_plane(u, v)
    B = x.shape[0]
    K = torch.full((B,), float("nan"), dtype=torch.float64, device=x.device)
    g = torch.full((B, 2, 2), float("nan"), dtype=torch.float64, device=x.device)
    compute_dtype = fmap.dtype or x.dtype
    bad: list[int] = []
    if B:
        with torch.no_grad():
            d_out = fmap(x[:1].to(compute_dtype)).shape[1]
        if d_out < 2:
            raise ValueError(
                f"the feature map has d_out = {d_out}: the image of a plane is at most a curve, "
                "so its Gaussian curvature is undefined; choose a layer with at least 2 features"
            )
        pair_fn = lambda sl: (torch.stack([u[sl], v[sl], u[sl]]), torch.stack([u[sl], v[sl], v[sl]]))  # noqa: E731
        ia, ib = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 1])
        basis_fn = lambda sl: (torch.stack([u[sl], v[sl]]), ia, ib)  # noqa: E731 - the same pairs for the jet
        with eval_mode(fmap.model), no_tf32():
            jet = _resolve_jet(jet, fmap, x, d_out)
            for sl, first, second in _batches(
                fmap,
                x,
                pair_fn,
                3,
                d_out,
                chunk_size,
                budget,
                progress,
                "curvature",
                max_points,
                None if jet is None else basis_fn,
                jet,
                on_coupled,
            ):
                T = torch.stack([first[0], first[1]], dim=-1)  # (Pb, n, 2): psi_u, psi_v
                Q, R = torch.linalg.qr(T)
                N = _normal(second.permute(1, 0, 2), Q)  # (Pb, 3, n): uu, vv, uv
                num = (N[:, 0] * N[:, 1]).sum(-1) - (N[:, 2] ** 2).sum(-1)
                det = (R[:, 0, 0] * R[:, 1, 1]) ** 2
                ok = _rank_ok(R, T, compute_dtype)
                K[sl] = torch.where(ok, num / det, torch.nan)
                g[sl] = T.mT @ T
                bad += (sl.start + (~ok).nonzero().flatten()).tolist()
    _warn_nan(bad, 2, "the Gaussian curvature")
    return (K, g) if return_metric else K


def plane_directions(x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/da, d/db) float64, each shaped like x1, of ``fastgeom.slices.plane(x1, x2, x3)``'s parametrisation
    (its points are affine in (a, b)), for the Gaussian curvature and area element of that plane."""
    from .slices import barycentric

    X = torch.stack([x1, x2, x3]).reshape(3, -1).to(torch.float64)
    lam = barycentric(
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )
    lam = lam.to(X.device)
    return ((lam[1] - lam[0]) @ X).reshape(x1.shape), ((lam[2] - lam[0]) @ X).reshape(x1.shape)


def _pairs(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (a, b), a <= b, diagonal pairs first: (d(d+1)/2,) each."""
    ia, ib = torch.triu_indices(d, d)
    order = torch.argsort((ia != ib).to(torch.int8), stable=True)
    return ia[order], ib[order]


def scalar_curvature_fmap(
    fmap: FeatureMap,
    x: torch.Tensor,
    d_out: int | None = None,
    *,
    chunk_size: int | None = None,
    budget: int | None = None,
    progress: bool | None = None,
    max_points: int | None = None,
    jet: JetGraph | bool | Callable[[], JetGraph | bool] | None = None,
    on_coupled: Callable[[], None] | None = None,
) -> torch.Tensor:
    """R (B,) float64, the Ricci scalar of fmap's full pullback metric at x (B, *in), for an immersion
    (d_out >= d_in). ``chunk_size``: direction pairs per pass (of d_in (d_in + 1) / 2); ``max_points``, ``jet``,
    ``on_coupled`` as in ``gaussian_curvature_fmap``."""
    check_points(x)
    B, in_shape = x.shape[0], tuple(x.shape[1:])
    d = x[0].numel() if B else int(torch.tensor(in_shape).prod())
    compute_dtype = fmap.dtype or x.dtype
    if d_out is None:
        with torch.no_grad():
            d_out = fmap(x.new_zeros((1, *in_shape)).to(compute_dtype)).shape[1]
    if d_out < d:
        raise ValueError(
            f"scalar_curvature needs an immersion (d_out >= d_in), but the feature map sends d_in = {d} inputs to "
            f"d_out = {d_out} features: its pullback metric J^T J has rank at most {d_out} < {d}, so it is degenerate "
            "(no inverse, no Levi-Civita connection) and its Ricci scalar is undefined. Use gaussian_curvature on "
            "input planes (2-D slices), which is defined wherever the plane's image has rank 2."
        )
    R = torch.full((B,), float("nan"), dtype=torch.float64, device=x.device)
    bad: list[int] = []
    if B:
        ia, ib = _pairs(d)
        P = ia.numel()
        eye = torch.eye(d, dtype=torch.float64, device=x.device).reshape(d, *in_shape)
        pair_fn = lambda sl: (
            eye[ia][:, None].expand(P, sl.stop - sl.start, *in_shape),  # noqa: E731
            eye[ib][:, None].expand(P, sl.stop - sl.start, *in_shape),
        )
        with eval_mode(fmap.model), no_tf32():
            basis_fn = lambda sl: (eye[:, None].expand(d, sl.stop - sl.start, *in_shape), ia, ib)  # noqa: E731
            jet = _resolve_jet(jet, fmap, x, d_out)
            for sl, first, second in _batches(
                fmap,
                x,
                pair_fn,
                P,
                d_out,
                chunk_size,
                budget,
                progress,
                "scalar curvature",
                max_points,
                basis_fn,
                jet,
                on_coupled,
            ):
                Pb = sl.stop - sl.start
                J = first[:d].permute(1, 2, 0)  # (Pb, n, d): diagonal pairs (a, a) give columns d_a phi
                Q, Rf = torch.linalg.qr(J)
                N = _normal(second.permute(1, 0, 2), Q)  # (Pb, P, n)
                Hn = torch.empty(Pb, d, d, N.shape[-1], dtype=torch.float64, device=x.device)
                Hn[:, ia, ib] = N
                Hn[:, ib, ia] = N
                ok = _rank_ok(Rf, J, compute_dtype)
                eye_b = torch.eye(d, dtype=torch.float64, device=x.device).expand(Pb, d, d)
                Rs = torch.where(ok[:, None, None], Rf, eye_b)
                Ri = torch.linalg.solve_triangular(Rs, eye_b, upper=True)  # R^{-1}: frame T R^{-1} is orthonormal
                Nt = torch.einsum("pai,pbj,pabn->pijn", Ri, Ri, Hn)
                mean = Nt.diagonal(dim1=1, dim2=2).sum(-1)  # (Pb, n): sum_i N~_ii
                val = (mean**2).sum(-1) - (Nt**2).sum((1, 2, 3))
                R[sl] = torch.where(ok, val, torch.nan)
                bad += (sl.start + (~ok).nonzero().flatten()).tolist()
    _warn_nan(bad, d, "the scalar curvature")
    return R


def gaussian_curvature(
    model,
    x: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    layer=None,
    *,
    pool=None,
    target: str = "euclidean",
    dtype: torch.dtype | None = None,
    return_metric: bool = False,
    chunk_size: int | None = None,
    budget: int | None = None,
    progress: bool | None = None,
):
    """Gaussian curvature of the input plane through each point, float64 ``Tensor[B]``.

    K at (0, 0) of the surface (a, b) -> phi(x + a u + b v), by Gauss's equation
    K = (<N_uu, N_vv> - |N_uv|^2) / det g (MATH.md 12.1). Defined for every model and layer that
    ``logvol`` accepts, submersions included.

    Args:
        model, layer, pool, target, dtype: as in ``fastgeom.logvol`` (the network runs in ``dtype``,
            default the model's; the Gauss equation is float64).
        x: ``Tensor[B, *input_shape]``. u, v: ``Tensor[*input_shape]`` shared, or ``Tensor[B, *input_shape]``
            one per point; linearly independent (else ValueError). K does not depend on the basis of span(u, v).
        return_metric: also return the plane's metric g ``Tensor[B, 2, 2]`` (g_uu, g_uv; g_vu, g_vv);
            the area element is sqrt(det g).
        chunk_size: direction pairs per vmapped pass (of 3). budget: bytes (default as the exact engine);
            out-of-memory halves the pass, then the point batch. progress: tqdm bar.

    Returns:
        K (and g). Points where the plane's image has rank < 2 are NaN, named in a ``RankDeficiencyWarning``.
    """
    from .geometry import Geometry

    return Geometry(model, layer, pool=pool, target=target, dtype=dtype, budget=budget).gaussian_curvature(
        x, u, v, return_metric=return_metric, chunk_size=chunk_size, progress=progress
    )


def scalar_curvature(
    model,
    x: torch.Tensor,
    layer=None,
    *,
    pool=None,
    target: str = "euclidean",
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    budget: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Ricci scalar of the full pullback metric of an immersion (d_out >= d_in), float64 ``Tensor[B]``.

    R = g^{ac} g^{bd} (<N_ac, N_bd> - <N_ab, N_cd>) from the d_in (d_in + 1) / 2 second derivatives
    (MATH.md 12.2). Round sphere of radius r: 2/r^2; equals ``fastgeom.shallow.ricci_scalar`` on shallow
    nets (the paper's values are 3x these). A submersion (d_out < d_in) raises ValueError: use
    ``gaussian_curvature``. Other arguments as in ``gaussian_curvature``; ``chunk_size`` is direction
    pairs per pass. Points whose Jacobian has rank < d_in are NaN, named in a warning.
    """
    from .geometry import Geometry

    return Geometry(model, layer, pool=pool, target=target, dtype=dtype, budget=budget).scalar_curvature(
        x, chunk_size=chunk_size, progress=progress
    )
