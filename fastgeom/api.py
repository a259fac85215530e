"""The functional API: ``logvol``, ``spectrum``, ``jacobian``, ``metric`` as thin wrappers of ``Geometry``.

``fastgeom.logvol(model, x, layer, **kw)`` is ``Geometry(model, layer, ...).logvol(x, ...)``: it
builds a handle for one call. To apply the same model and layer to many point sets, build the
handle once (``fastgeom.Geometry``) and reuse it: the probe and the engine (trace, plan, choice)
are then paid once.
"""

from __future__ import annotations

import torch

from .checks import check_points
from .diagnostics import Diagnostics, NonFiniteWarning, PrecisionWarning, RankDeficiencyWarning
from .features import FeatureMap, LayerSpec, PoolSpec
from .geometry import METHODS, Geometry

__all__ = [
    "logvol",
    "spectrum",
    "jacobian",
    "metric",
    "prepare",
    "check_points",
    "Diagnostics",
    "RankDeficiencyWarning",
    "PrecisionWarning",
    "NonFiniteWarning",
    "METHODS",
]

_HANDLE_KW = ("method", "pool", "dtype", "budget", "backend", "target", "mode")


def _handle(model, layer, kw: dict) -> Geometry:
    return Geometry(model, layer, **{k: kw.pop(k) for k in _HANDLE_KW if k in kw})


def logvol(
    model,
    x: torch.Tensor,
    layer: LayerSpec = None,
    *,
    method: str = "auto",
    pool: PoolSpec = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    rank_tol: float | None = None,
    normalize: bool = False,
    return_diagnostics: bool = False,
    progress: bool | None = None,
    budget: int | None = None,
    backend: str = "auto",
    target: str = "euclidean",
    return_stderr: bool = False,
    seed: int | None = None,
    options: dict | None = None,
    mode: str | None = None,
):
    """Log volume element: sum of the natural logs of the non-zero singular values of J at each point.

    Args:
        model: an ``nn.Module`` (put in eval mode for the computation, then restored), or None when
            ``layer`` is a callable feature map.
        x: ``Tensor[B, *input_shape]`` (floating point, finite). ``B = 0`` gives an empty result.
        layer: a name from ``model.named_modules()``, a callable ``x -> features``, or None (model output).
            The feature is the layer's output flattened per point.
        method: ``"auto"`` (exact: streamed, switching to ``"linearized"`` when the model traces, the
            traced pass agrees with torch.func at the first point and the run is long enough for it
            to pay; ``Diagnostics.method`` and ``.reason`` say which ran and why), ``"dense"``
            (torch.func reference), ``"streamed"`` (exact, chunked VJPs/JVPs within a memory budget,
            halving on out-of-memory), ``"linearized"`` (exact, streamed through the torch.fx-traced
            network linearised once per point batch; see ``engine/linear_net.py``) or ``"randomized"``.
        pool: average-pool a (C, H, W) feature: target size ``N`` (int), kernel ``(kh, kw)`` or
            ``{"kernel": k}`` (see ``features.pool_window``).
        chunk_size: cotangents/tangents per pass (default: from ``budget``; not for ``"dense"``).
        dtype: dtype of the network pass (default: the model's); accumulation and factorisation are float64.
        rank_tol: None (default) drops singular values at the rounding level of the compute dtype
            (column-relative criterion of the pivoted QR; counted in ``Diagnostics.n_dropped`` and
            named in a warning); ``0.0`` keeps every non-zero value; ``t`` in (0, 1) drops values below
            ``t * s_max``. Exact zeros (zero rows/columns of J, e.g. dead units) are always removed.
        normalize: divide the features by sqrt(d_out) (MATH.md 2.1), i.e. subtract rank/2 * log(d_out).
        return_diagnostics: also return a ``Diagnostics`` (rank, condition estimate, rounding-level
            counts, the engine's record).
        progress: tqdm bar (default: when stderr is a terminal). budget: bytes for the planner.
        backend: "auto" | "torch" | "cpp" | "cuda" | "triton" for the compiled ops.
        target: ``"euclidean"`` (pull back the flat metric) or ``"sphere"`` (pull back the round metric
            of the unit sphere through phi/|phi|, for normalised embeddings).
        return_stderr, seed, options: for ``method="randomized"`` (see ``fastgeom.randomized``):
            return ``(value, stderr)``; random seed; estimator options (probes, Lanczos steps, ...).
        mode: None (reverse mode when d_out <= d_in), ``"reverse"`` or ``"forward"``.

    Returns:
        float64 ``Tensor[B]``, detached (not differentiable), and ``Diagnostics`` if asked. Points
        whose input overflows the compute dtype or whose features or Jacobian are not finite are NaN,
        named in a ``NonFiniteWarning``; ``RankDeficiencyWarning`` and ``PrecisionWarning`` name the
        points of lower rank or with kept rounding-level values.
    """
    kw = dict(method=method, pool=pool, dtype=dtype, budget=budget, backend=backend, target=target, mode=mode)
    return _handle(model, layer, kw).logvol(
        x,
        rank_tol=rank_tol,
        normalize=normalize,
        return_diagnostics=return_diagnostics,
        progress=progress,
        chunk_size=chunk_size,
        return_stderr=return_stderr,
        seed=seed,
        options=options,
    )


def spectrum(
    model,
    x: torch.Tensor,
    layer: LayerSpec = None,
    *,
    k: int | None = None,
    method: str = "auto",
    pool: PoolSpec = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    rank_tol: float | None = None,
    normalize: bool = False,
    return_diagnostics: bool = False,
    progress: bool | None = None,
    budget: int | None = None,
    backend: str = "auto",
    target: str = "euclidean",
    seed: int | None = None,
    options: dict | None = None,
    mode: str | None = None,
):
    """Singular values of J, descending: float64 ``Tensor[B, r]``, r = min(d_in, d_out) (or k).

    Exact: pivoted QR of J (see ``linalg``) then one-sided Jacobi SVD of R, which keeps relative
    accuracy on graded Jacobians. Entries beyond a point's rank (zero rows/columns of J, or values
    dropped by ``rank_tol``) are exactly 0. Other arguments as in ``logvol``.
    """
    kw = dict(method=method, pool=pool, dtype=dtype, budget=budget, backend=backend, target=target, mode=mode)
    return _handle(model, layer, kw).spectrum(
        x,
        k,
        rank_tol=rank_tol,
        normalize=normalize,
        return_diagnostics=return_diagnostics,
        progress=progress,
        chunk_size=chunk_size,
        seed=seed,
        options=options,
    )


def jacobian(
    model,
    x: torch.Tensor,
    layer: LayerSpec = None,
    *,
    method: str = "auto",
    pool: PoolSpec = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
    budget: int | None = None,
    target: str = "euclidean",
    mode: str | None = None,
) -> torch.Tensor:
    """Jacobian of the feature map, float64 ``Tensor[B, d_out, d_in]`` (for models small enough to materialise)."""
    if method == "randomized":
        raise ValueError(
            "method='randomized' does not materialise J; choose 'auto', 'dense', 'streamed' or 'linearized'"
        )
    g = Geometry(model, layer, method=method, pool=pool, dtype=dtype, budget=budget, target=target, mode=mode)
    return g.jacobian(x, progress=progress, chunk_size=chunk_size)


def metric(model, x: torch.Tensor, layer: LayerSpec = None, *, normalize: bool = False, **kw) -> torch.Tensor:
    """Pullback metric g = J^T J, float64 ``Tensor[B, d_in, d_in]`` (divided by d_out if normalize)."""
    progress, chunk_size = kw.pop("progress", None), kw.pop("chunk_size", None)
    if kw.get("method") == "randomized":
        raise ValueError("method='randomized' does not materialise J; use an exact method for metric")
    return Geometry(model, layer, **kw).metric(x, normalize=normalize, progress=progress, chunk_size=chunk_size)


def prepare(
    model, x: torch.Tensor, layer: LayerSpec, pool: PoolSpec, dtype, target: str = "euclidean"
) -> tuple[FeatureMap, int, int]:
    """Validate inputs, build the feature map and probe it on one point: (fmap, d_in, d_out)."""
    g = Geometry(model, layer, pool=pool, dtype=dtype, target=target)
    p = g.probe(x)
    return g.fmap, p.d_in, p.d_out
