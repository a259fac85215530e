"""Public entry points: logvol, spectrum, jacobian, metric (exact methods: "dense", "streamed", "linearized")."""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from tqdm.auto import tqdm

from . import linalg
from .engine import is_oom, jacobian_blocks, jacobian_dense, plan
from .engine.linear_net import validated_linearize
from .features import FeatureMap, LayerSpec, PoolSpec, eval_mode, no_tf32

EXACT_METHODS = ("dense", "streamed", "linearized")
METHODS = ("auto",) + EXACT_METHODS + ("randomized",)


class RankDeficiencyWarning(UserWarning):
    """Some points have fewer non-zero singular values than min(d_in, d_out)."""


class PrecisionWarning(UserWarning):
    """Some values may not be resolved in the precision the Jacobian was computed in."""


@dataclass
class Diagnostics:
    """Per-point diagnostics of an exact logvol / spectrum computation (tensors have shape (B,))."""

    rank: torch.Tensor  # singular values kept per point
    rank_structural: torch.Tensor  # min(#non-zero rows, #non-zero columns) of J
    full_rank: int  # min(d_in, d_out)
    cond_est: torch.Tensor  # max|R_ii| / min|R_ii| of the pivoted QR over kept values
    n_rounding: torch.Tensor  # kept values at the rounding level of the compute dtype
    dynamic_pivoting: torch.Tensor  # refactored with dynamic column pivoting
    method: str
    mode: str  # "reverse" / "forward" / "jacrev" / "jacfwd"
    compute_dtype: torch.dtype
    d_in: int
    d_out: int
    chunk: int | None = None
    points_per_batch: int | None = None
    extra: dict = field(default_factory=dict)


def _fmt_points(idx: list[int], vals: list | None = None, limit: int = 10, label: str = "rank") -> str:
    items = [f"{i}" if vals is None else f"{i} ({label} {v})" for i, v in zip(idx, vals or [None] * len(idx))]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_points(x) -> None:
    """Type/dtype/finiteness checks on x (B, *input_shape)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, *input_shape), got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x has dtype {x.dtype}; geometry needs floating-point inputs (e.g. x.float() or x.double())")
    if x.is_complex():
        raise TypeError("x is complex; fastgeom handles real inputs only")
    if x.dim() < 2:
        raise ValueError(f"x must be (B, *input_shape) with a batch dimension, got shape {tuple(x.shape)}; "
                         "for a single point use x[None]")
    if x.shape[0] and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"x contains NaN or Inf at point(s) {_fmt_points(bad)}; remove or replace them")


def prepare(model, x: torch.Tensor, layer: LayerSpec, pool: PoolSpec, dtype,
            target: str = "euclidean") -> tuple[FeatureMap, int, int]:
    """Validate inputs, build the feature map and probe it on one point: (fmap, d_in, d_out)."""
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None with a callable layer), got {type(model).__name__}")
    if model is None and not callable(layer):
        raise TypeError("model is None: pass a callable feature map as layer=")
    check_points(x)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
    fmap = FeatureMap(model, layer, pool, dtype, target)
    # probe one point (a zero point when B = 0, so empty results still have the right shapes)
    xp = x[:1] if x.shape[0] else x.new_zeros((1, *x.shape[1:]))
    try:
        with torch.no_grad(), eval_mode(model):  # eval: a train-mode BatchNorm must not see (or update on) the probe
            out = fmap(xp)
    except (KeyError, TypeError) as e:
        if "feature at layer" in str(e) or "pool must be" in str(e):
            raise
        raise ValueError(f"the model rejected points of shape {tuple(x.shape[1:])} (x has shape {tuple(x.shape)}): "
                         f"{type(e).__name__}: {e}. Pass x as (B, *input_shape) with the input shape the model expects.") from e
    except ValueError as e:
        if str(e).startswith("pool") or "was not reached by the forward pass" in str(e):
            raise
        raise ValueError(f"the model rejected points of shape {tuple(x.shape[1:])} (x has shape {tuple(x.shape)}): "
                         f"{e}. Pass x as (B, *input_shape) with the input shape the model expects.") from e
    except RuntimeError as e:
        raise ValueError(f"the model rejected points of shape {tuple(x.shape[1:])} (x has shape {tuple(x.shape)}): "
                         f"{e}. Pass x as (B, *input_shape) with the input shape the model expects.") from e
    if target == "sphere" and x.shape[0] and not bool(torch.isfinite(out).all()):
        raise ValueError("target='sphere' needs non-zero features, but phi(x) = 0 at the first point")
    if not out.is_floating_point():
        raise TypeError(f"the feature map returns dtype {out.dtype}; it must be floating point to be differentiable")
    return fmap, xp[0].numel(), out.shape[1]


def _want_progress(progress, B: int) -> bool:
    if progress is None:
        return B > 1 and sys.stderr.isatty()
    return bool(progress)


def jacobian_batches(fmap, x, d_in, d_out, method, chunk_size, progress, budget, desc) -> Iterator:
    """Yield (points slice, float64 J block, info dict) with the chosen exact method."""
    B = x.shape[0]
    if B == 0:
        return
    if fmap.dtype is not None and x.dtype != fmap.dtype:
        x = x.to(fmap.dtype)  # differentiate w.r.t. x in the compute dtype, else J is rounded to x's dtype
    bar = tqdm(total=B, desc=desc, unit="pt", disable=not _want_progress(progress, B), leave=False)
    try:
        if method == "dense":
            info = {"mode": "jacrev" if d_out <= d_in else "jacfwd", "chunk": None, "points": B}
            J = jacobian_dense(fmap, x, d_out).to(torch.float64)
            bar.update(B)
            yield slice(0, B), J, info
            return
        linearize = None
        if method == "linearized":
            linearize = validated_linearize(fmap, x, d_out)
        elif method == "auto":
            try:  # the linearised engine when the model traces and validates, else torch.func's
                linearize = validated_linearize(fmap, x, d_out)
            except Exception as e:  # noqa: BLE001 - any failure of the optional fast path falls back
                if is_oom(e):
                    raise
                linearize = None
        engine = "linearized" if linearize is not None else "streamed"
        p = plan(fmap, x, d_in, d_out, chunk_size=chunk_size, budget=budget)
        info = {"mode": p.mode, "chunk": p.chunk, "points": p.points, "engine": engine}
        for sl, J in jacobian_blocks(fmap, x, d_out, p, progress=bar.update, linearize=linearize):
            info = {"mode": p.mode, "chunk": p.chunk, "points": p.points, "engine": engine}
            yield sl, J, info
    finally:
        bar.close()


def _resolve_method(method: str, allowed=METHODS) -> str:
    """The method to run; "auto" stays "auto" (exact: linearized when the model traces, else streamed)."""
    if method not in allowed:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(repr(m) for m in allowed)}")
    return method


def _exact(model, x, layer, method, pool, chunk_size, dtype, rank_tol, progress, budget, backend, desc,
           target: str = "euclidean"):
    fmap, d_in, d_out = prepare(model, x, layer, pool, dtype, target)
    if rank_tol is not None and not (isinstance(rank_tol, (int, float)) and 0 <= rank_tol < 1):
        raise ValueError(f"rank_tol must be a float in [0, 1) (relative to the largest singular value), got {rank_tol!r}")
    B = x.shape[0]
    results = []
    info = {"mode": None, "chunk": None, "points": None}
    compute_dtype = fmap.dtype or x.dtype
    any_dep = False
    with eval_mode(model), no_tf32():
        for sl, J, info in jacobian_batches(fmap, x, d_in, d_out, method, chunk_size, progress, budget, desc):
            any_dep = any_dep or bool((J != 0).any())
            f = linalg.factor(J, compute_dtype=compute_dtype, rank_tol=rank_tol, backend=backend,
                              known_null=int(target == "sphere" and d_out <= d_in))
            results.append((sl, f, None))
    if B and not any_dep:
        raise ValueError(f"the feature map{'' if layer is None else f' at layer {layer!r}'} does not depend on the input: "
                         "its Jacobian is exactly zero at every point. Check that the layer lies downstream of the input "
                         "and that the model does not detach it.")
    return fmap, d_in, d_out, results, info, compute_dtype


def _merge(results, B, d_in, d_out, method, info, compute_dtype, target="euclidean") -> tuple[Diagnostics, list]:
    dev_fields = {}
    cores = [None] * B
    for name in ("logvol", "rank", "rank_structural", "n_rounding", "cond_est", "dynamic_pivoting"):
        parts = [getattr(f, name) for _, f, _ in results]
        dev_fields[name] = torch.cat(parts) if parts else torch.zeros(0)
    for sl, f, _ in results:
        cores[sl] = f.cores
    diag = Diagnostics(rank=dev_fields["rank"], rank_structural=dev_fields["rank_structural"],
                       full_rank=min(d_in, d_out - (target == "sphere")), cond_est=dev_fields["cond_est"],
                       n_rounding=dev_fields["n_rounding"], dynamic_pivoting=dev_fields["dynamic_pivoting"],
                       method=info.get("engine", method), mode=info["mode"], compute_dtype=compute_dtype, d_in=d_in, d_out=d_out,
                       chunk=info["chunk"], points_per_batch=info["points"])
    return diag, dev_fields["logvol"], cores


def _warn(diag: Diagnostics, rank_tol) -> None:
    low = (diag.rank < diag.full_rank).nonzero().flatten().tolist()
    if low:
        warnings.warn(
            f"{len(low)} point(s) have rank below min(d_in, d_out) = {diag.full_rank}: "
            f"{_fmt_points(low, diag.rank[low].tolist())}. Their log volume is the sum over the non-zero singular "
            "values only (zero rows/columns of J, e.g. dead units, are removed"
            + (f"; rank_tol={rank_tol} dropped more" if rank_tol is not None else "") + ").",
            RankDeficiencyWarning, stacklevel=3)
    rnd = (diag.n_rounding > 0).nonzero().flatten().tolist()
    if rnd:
        warnings.warn(
            f"{len(rnd)} point(s) have singular values at the rounding level of {diag.compute_dtype} "
            f"(numerically rank-deficient, so the result may not be resolved in this precision): "
            f"{_fmt_points(rnd, diag.n_rounding[rnd].tolist(), label='count')} (count of such values in brackets). Criterion: "
            "|R_ii| <= max(m, n) * eps * ||pivot column|| in the pivoted QR of J. Compute in float64 (dtype=torch.float64) "
            "or drop them with rank_tol=.", PrecisionWarning, stacklevel=3)


def logvol(model, x: torch.Tensor, layer: LayerSpec = None, *, method: str = "auto", pool: PoolSpec = None,
           chunk_size: int | None = None, dtype: torch.dtype | None = None, rank_tol: float | None = None,
           normalize: bool = False, return_diagnostics: bool = False, progress: bool | None = None,
           budget: int | None = None, backend: str = "auto", target: str = "euclidean",
           return_stderr: bool = False, seed: int | None = None, options: dict | None = None):
    """Log volume element: sum of the natural logs of the non-zero singular values of J at each point.

    Args:
        model: an ``nn.Module`` (put in eval mode for the computation, then restored), or None when
            ``layer`` is a callable feature map.
        x: ``Tensor[B, *input_shape]`` (floating point, finite). ``B = 0`` gives an empty result.
        layer: a name from ``model.named_modules()``, a callable ``x -> features``, or None (model output).
            The feature is the layer's output flattened per point.
        method: ``"auto"`` (exact: ``"linearized"`` when the model traces and the traced pass agrees
            with torch.func at the first point, else ``"streamed"``; ``Diagnostics.method`` says which),
            ``"dense"`` (torch.func reference), ``"streamed"``
            (exact, chunked VJPs/JVPs within a memory budget, halving on out-of-memory) or
            ``"linearized"`` (exact, streamed through the torch.fx-traced network linearised once per
            point batch: BatchNorm folded, activation derivatives stored, fused residual steps;
            needs a traceable model, see ``engine/linear_net.py``).
        pool: average-pool a (C, H, W) feature: target size ``N`` (int), kernel ``(kh, kw)`` or
            ``{"kernel": k}`` (see ``features.pool_window``).
        chunk_size: cotangents/tangents per pass (default: from ``budget``).
        dtype: dtype of the network pass (default: the model's); accumulation and factorisation are float64.
        rank_tol: drop singular values below ``rank_tol * s_max`` (relative); default None drops only
            exact zeros (zero rows/columns of J). Nothing else is thresholded.
        normalize: divide the features by sqrt(d_out) (MATH.md 2.1), i.e. subtract rank/2 * log(d_out).
        return_diagnostics: also return a ``Diagnostics`` (rank, condition estimate, rounding-level counts).
        progress: tqdm bar (default: when stderr is a terminal). budget: bytes for the streamed planner.
        backend: "auto" | "torch" | "cpp" | "cuda" for the float64 factorisation ops.
        target: ``"euclidean"`` (pull back the flat metric) or ``"sphere"`` (pull back the round metric
            of the unit sphere through phi/|phi|, for normalised embeddings).
        return_stderr, seed, options: for ``method="randomized"`` (see ``fastgeom.randomized``):
            return ``(value, stderr)``; random seed; estimator options (probes, Lanczos steps, ...).

    Returns:
        float64 ``Tensor[B]`` (and ``Diagnostics`` if asked). Warns (``RankDeficiencyWarning``,
        ``PrecisionWarning``) naming the points whose rank is below min(d_in, d_out) or whose values
        sit at rounding level.
    """
    m = _resolve_method(method)
    if m == "randomized":
        from . import randomized
        fmap, d_in, d_out = prepare(model, x, layer, pool, dtype, target)
        with eval_mode(model), no_tf32():
            val, err = randomized.logvol(fmap, x, d_in, d_out, seed=seed, progress=progress, **(options or {}))
        if normalize:
            val = val - 0.5 * min(d_in, d_out) * math.log(d_out)
        return (val, err) if return_stderr else val
    if return_stderr:
        raise ValueError(f"return_stderr=True needs method='randomized' (method {method!r} is exact)")
    fmap, d_in, d_out, results, info, cdt = _exact(model, x, layer, m, pool, chunk_size, dtype, rank_tol,
                                                     progress, budget, backend, "logvol", target)
    B = x.shape[0]
    if B == 0:
        out = torch.zeros(0, dtype=torch.float64, device=x.device)
        return (out, None) if return_diagnostics else out
    diag, lv, _ = _merge(results, B, d_in, d_out, m, info, cdt, target)
    if normalize:
        lv = lv - 0.5 * diag.rank.to(torch.float64) * math.log(d_out)
    _warn(diag, rank_tol)
    return (lv, diag) if return_diagnostics else lv


def spectrum(model, x: torch.Tensor, layer: LayerSpec = None, *, k: int | None = None, method: str = "auto",
             pool: PoolSpec = None, chunk_size: int | None = None, dtype: torch.dtype | None = None,
             rank_tol: float | None = None, normalize: bool = False, return_diagnostics: bool = False,
             progress: bool | None = None, budget: int | None = None, backend: str = "auto",
             target: str = "euclidean", seed: int | None = None, options: dict | None = None):
    """Singular values of J, descending: float64 ``Tensor[B, r]``, r = min(d_in, d_out) (or k).

    Exact: pivoted QR of J (see ``linalg``) then one-sided Jacobi SVD of R, which keeps relative
    accuracy on graded Jacobians. Entries beyond a point's rank (zero rows/columns of J, or values
    dropped by ``rank_tol``) are exactly 0. Other arguments as in ``logvol``.
    """
    m = _resolve_method(method)
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    if m == "randomized":
        from . import randomized
        if k is None:
            raise ValueError("method='randomized' estimates the top-k singular values: pass k=")
        fmap, d_in, d_out = prepare(model, x, layer, pool, dtype, target)
        with eval_mode(model), no_tf32():
            s = randomized.spectrum(fmap, x, d_in, d_out, k=k, seed=seed, progress=progress, **(options or {}))
        return s / math.sqrt(d_out) if normalize else s
    fmap, d_in, d_out, results, info, cdt = _exact(model, x, layer, m, pool, chunk_size, dtype, rank_tol,
                                                     progress, budget, backend, "spectrum", target)
    B = x.shape[0]
    r = min(d_in, d_out)
    kk = r if k is None else min(k, r)
    if B == 0:
        out = torch.zeros(0, kk, dtype=torch.float64, device=x.device)
        return (out, None) if return_diagnostics else out
    diag, _, _ = _merge(results, B, d_in, d_out, m, info, cdt, target)
    parts = []
    for sl, f, _ in results:
        parts.append(linalg.spectrum_from_factor(f, r)[:, :kk])
    s = torch.cat(parts)
    if normalize:
        s = s / math.sqrt(d_out)
    _warn(diag, rank_tol)
    return (s, diag) if return_diagnostics else s


def jacobian(model, x: torch.Tensor, layer: LayerSpec = None, *, method: str = "auto", pool: PoolSpec = None,
             chunk_size: int | None = None, dtype: torch.dtype | None = None, progress: bool | None = None,
             budget: int | None = None, target: str = "euclidean") -> torch.Tensor:
    """Jacobian of the feature map, float64 ``Tensor[B, d_out, d_in]`` (for models small enough to materialise)."""
    m = _resolve_method(method, METHODS[:-1])
    fmap, d_in, d_out = prepare(model, x, layer, pool, dtype, target)
    B = x.shape[0]
    if B == 0:
        return torch.zeros(0, d_out, d_in, dtype=torch.float64, device=x.device)
    out = torch.empty(B, d_out, d_in, dtype=torch.float64, device=x.device)
    with eval_mode(model), no_tf32():
        for sl, J, _ in jacobian_batches(fmap, x, d_in, d_out, m, chunk_size, progress, budget, "jacobian"):
            out[sl] = J
    return out


def metric(model, x: torch.Tensor, layer: LayerSpec = None, *, normalize: bool = False, **kw) -> torch.Tensor:
    """Pullback metric g = J^T J, float64 ``Tensor[B, d_in, d_in]`` (divided by d_out if normalize)."""
    J = jacobian(model, x, layer, **kw)
    g = J.mT @ J
    return g / J.shape[1] if normalize and J.shape[1] else g
