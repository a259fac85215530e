"""``Geometry``: model + layer -> a reusable handle that measures the pullback geometry at any points.

Build once, apply many: the handle validates its arguments and builds the feature map at
construction; at the first call for an input shape, device and dtype it probes the feature map at
one point (output size, saved-activation bytes, batch coupling) and builds the engine
(``engine.select``), which later calls with that key reuse (a linearised engine keeps its traced,
BatchNorm-folded copy of the weights; ``free()`` drops it). The functional API (``fastgeom.logvol``
and friends) is ``Geometry(model, ...).logvol(x, ...)``.

Reductions stream: each point batch's float64 J is factorised, reduced to per-point scalars (or the
(B, r) spectrum) and freed, so memory does not grow with the number of points beyond the results.
Points whose input overflows the compute dtype, or whose feature or Jacobian is not finite, are NaN
and named in a ``NonFiniteWarning``. Results are detached (not differentiable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checks, linalg
from .checks import check_points
from .diagnostics import Diagnostics, fmt_points, warn
from .engine import EXACT_METHODS, select
from .engine.guards import ad_guards
from .engine.planner import check_budget, saved_bytes_one_point
from .features import FeatureMap, LayerSpec, PoolSpec, eval_mode, no_tf32
from .ops.dispatch import recording

METHODS = ("auto",) + EXACT_METHODS + ("randomized",)
# modules that compute something else in training mode; a model with one in training mode is warned about once
_MODE_DEPENDENT = (
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.MultiheadAttention,
)
_WARNED_TRAIN: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
BACKENDS = ("auto", "torch", "cpp", "cuda", "triton")
MODES = (None, "reverse", "forward")
JET_MIN_POINTS = 64  # curvature points (per input shape) after which a handle builds the jet pass (``_jet``)


class EvalModeWarning(UserWarning):
    """The model had modules in training mode; the geometry is that of the model in eval mode."""


@dataclass(frozen=True)
class Probe:
    """What one point tells about the feature map for an input shape, device and dtype."""

    d_in: int
    d_out: int
    act_bytes: tuple[int, int]  # (total, largest) saved-activation bytes of one point
    coupled: bool  # features of a point depend on the other points of its batch


def _want_progress(progress, B: int) -> bool:
    if progress is None:
        return B > 1 and sys.stderr.isatty()
    return bool(progress)


class Geometry:
    """The pullback geometry of ``model``'s ``layer``: ``logvol``, ``spectrum``, ``jacobian``, ``metric``.

    Args:
        model: an ``nn.Module`` (evaluated in eval mode, then restored), or None with a callable ``layer``.
        layer: a name from ``model.named_modules()``, a callable ``x -> features``, or None (model output).
        pool: average-pool a (C, H, W) feature (see ``features.pool_window``).
        target: ``"euclidean"`` or ``"sphere"`` (pull back the round metric through phi/|phi|).
        dtype: dtype of the network pass (default: the model's); accumulation is float64.
        method: ``"auto"`` | ``"dense"`` | ``"streamed"`` | ``"linearized"`` | ``"randomized"``.
        budget: bytes for the engine's planner (default: half the free GPU memory, or 768 MiB on CPU).
        backend: ``"auto"`` | ``"torch"`` | ``"cpp"`` | ``"cuda"`` | ``"triton"`` for the compiled ops.
        mode: None (reverse when d_out <= d_in), ``"reverse"`` (VJPs) or ``"forward"`` (JVPs).
    """

    def __init__(
        self,
        model,
        layer: LayerSpec = None,
        *,
        pool: PoolSpec = None,
        target: str = "euclidean",
        dtype: torch.dtype | None = None,
        method: str = "auto",
        budget: int | None = None,
        backend: str = "auto",
        mode: str | None = None,
    ):
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module (or None with a callable layer), got {type(model).__name__}"
            )
        if model is None and not callable(layer):
            raise TypeError("model is None: pass a callable feature map as layer=")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(repr(m) for m in METHODS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")
        if mode not in MODES:
            raise ValueError(f"mode must be None, 'reverse' or 'forward', got {mode!r}")
        check_budget(budget)
        self.model, self.method, self.budget, self.backend, self.mode = model, method, budget, backend, mode
        self.fmap = FeatureMap(model, layer, pool, dtype, target)
        self._probes: dict[tuple, Probe] = {}
        self._engines: dict[tuple, object] = {}
        self._random_passes: dict[tuple, object] = {}  # randomized: (xb, mode) -> pass, per key
        self._jets: dict[tuple, Any] = {}  # curvature: the validated JetGraph per key (False: none)
        self._curv_points: dict[tuple, int] = {}  # curvature points computed per key before the jet was built

    # ------------------------------------------------------------------ what the handle holds
    def __repr__(self) -> str:
        layer = self.fmap.layer if isinstance(self.fmap.layer, (str, type(None))) else "<callable>"
        held = [f"{k[0]} on {k[1]} {k[2]}: {getattr(e, 'name', '?')}" for k, e in self._engines.items()]
        return (
            f"Geometry({type(self.model).__name__}, layer={layer!r}, method={self.method!r}, "
            f"target={self.fmap.target!r}; engines: {'; '.join(held) or 'none yet'}; "
            f"{self.held_bytes() / 2**20:.1f} MiB held)"
        )

    def held_bytes(self) -> int:
        """Bytes of the private weight copies the handle's engines hold (the linearised engine's
        BatchNorm-folded copy); the feature map's parameters are views of the model's own unless ``dtype``
        casts them."""
        total = 0
        gms = [getattr(j.graph, "gm", None) for j in self._jets.values() if j]
        for e in self._engines.values():
            for lp in (getattr(e, "make_pass", None), getattr(e, "linear_pass", None)):
                gms.append(getattr(getattr(lp, "graph", None), "gm", None))
        for gm in gms:
            if gm is not None:
                total += sum(p.numel() * p.element_size() for p in gm.parameters())
        return total

    def free(self) -> None:
        """Drop the engines (and their weight copies); the next call rebuilds them."""
        self._engines.clear()
        self._random_passes.clear()
        self._probes.clear()
        self._jets.clear()
        self._curv_points.clear()

    # ------------------------------------------------------------------ probe and engine
    def compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        return self.fmap.dtype or x.dtype

    def _key(self, x: torch.Tensor) -> tuple:
        return (tuple(x.shape[1:]), x.device, self.compute_dtype(x))

    def probe(self, x: torch.Tensor) -> Probe:
        """Validate x (B, *in) against the model and probe the feature map at one point (once per key)."""
        check_points(x, device=checks.model_device(self.model))
        key = self._key(x)
        if key in self._probes:
            return self._probes[key]
        cdt = self.compute_dtype(x)
        xp = (x[:1] if x.shape[0] else x.new_zeros((1, *x.shape[1:]))).detach().to(cdt).clone()
        if x.shape[0] and not bool(torch.isfinite(xp).all()):
            xp = torch.zeros_like(xp)  # the first point overflows the compute dtype: probe at 0
        out = self._probe_forward(xp, x.shape)
        if not out.is_floating_point():
            raise TypeError(
                f"the feature map returns dtype {out.dtype}; it must be floating point to be differentiable"
            )
        if self.fmap.target == "sphere" and not bool(torch.isfinite(out).all()):
            raise ValueError("target='sphere' needs non-zero features, but phi(x) = 0 at the first point")
        with eval_mode(self.model), no_tf32(), ad_guards():
            act = saved_bytes_one_point(self.fmap, xp)
            xs, _ = self._points(x[:3]) if x.shape[0] else (xp, None)
            report = checks.probe(self.fmap, xs)  # warns: layer called twice, batch coupling
        p = Probe(d_in=xp[0].numel(), d_out=out.shape[1], act_bytes=act, coupled=report.batch_coupled)
        self._probes[key] = p
        return p

    def _probe_forward(self, xp: torch.Tensor, shape) -> torch.Tensor:
        def rejected(e):
            return ValueError(
                f"the model rejected points of shape {tuple(shape[1:])} (x has shape {tuple(shape)}): "
                f"{type(e).__name__}: {e}. Pass x as (B, *input_shape) with the input shape the model "
                "expects."
            )

        try:
            with torch.no_grad(), eval_mode(self.model), no_tf32():
                return self.fmap(xp)
        except (KeyError, TypeError) as e:
            if "feature at layer" in str(e) or "pool must be" in str(e):
                raise
            raise rejected(e) from e
        except ValueError as e:
            if str(e).startswith("pool") or "was not reached by the forward pass" in str(e):
                raise
            raise rejected(e) from e
        except RuntimeError as e:
            from .engine import is_oom

            if is_oom(e):
                raise MemoryError(
                    f"out of memory in the first forward pass at one point ({e}); the model does "
                    "not fit on this device at this input size"
                ) from e
            raise rejected(e) from e

    def engine(self, x: torch.Tensor, method: str | None = None):
        """The engine for points shaped like x (built at the first call for its key, then reused)."""
        method = method or self.method
        p = self.probe(x)
        key = (*self._key(x), method)
        if key not in self._engines:
            x1 = (
                x[:1].detach().to(self.compute_dtype(x))
                if x.shape[0]
                else torch.zeros((1, *x.shape[1:]), dtype=self.compute_dtype(x), device=x.device)
            )
            with eval_mode(self.model), no_tf32():
                eng = select(
                    method, self.fmap, x1, p.d_in, p.d_out, budget=self.budget, mode=self.mode, act_bytes=p.act_bytes
                )
            if p.coupled:
                eng.points = 1  # each point alone
            self._engines[key] = eng
        return self._engines[key]

    def _note_coupling(self, x: torch.Tensor, run) -> None:
        """A run that found a coupled point batch (and went point by point) marks the key's probe coupled, so
        the curvature routes (which batch points by the probe) compute point by point too."""
        if getattr(run, "coupled", False):
            self._mark_coupled(x)

    def _mark_coupled(self, x: torch.Tensor) -> None:
        """Mark the probe of x's key coupled (a run found a coupled point batch): later calls of every route
        (exact engines built after this, randomized, curvature) compute point by point."""
        key = self._key(x)
        if key in self._probes and not self._probes[key].coupled:
            self._probes[key] = dataclasses.replace(self._probes[key], coupled=True)
        for ekey, eng in self._engines.items():  # engines built before: each point alone too
            if ekey[: len(key)] == key:
                eng.points = 1  # type: ignore[attr-defined]

    def _warn_train(self) -> None:
        if self.model is None or self.model in _WARNED_TRAIN:
            return
        training = [
            n or type(self.model).__name__
            for n, m in self.model.named_modules()
            if m.training and isinstance(m, _MODE_DEPENDENT)
        ]
        if training:
            _WARNED_TRAIN.add(self.model)
            warnings.warn(
                f"{len(training)} module(s) whose output depends on the training mode were in training "
                f"mode ({fmt_points(training, limit=3)}): the geometry is that of the model in eval mode "
                "(BatchNorm running statistics, no dropout); call model.eval() to silence this",
                EvalModeWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ the exact loop
    @contextlib.contextmanager
    def _guards(self):
        with eval_mode(self.model), no_tf32(), torch.no_grad(), ad_guards():
            yield

    def _points(self, x: torch.Tensor):
        """(x in the compute dtype, detached, bad rows zeroed; bool (B,) mask of points that overflow it)."""
        over = checks.cast_overflow(x, self.compute_dtype(x))
        xc = x.detach().to(self.compute_dtype(x))
        if bool(over.any()):
            xc = torch.where(over.reshape(-1, *[1] * (x.dim() - 1)), torch.zeros_like(xc), xc)
        return xc, over

    def _exact(self, x, *, rank_tol, chunk_size, progress, desc, want_spectrum: bool, k=None):
        if self.method == "randomized":
            raise AssertionError("randomized has no exact loop")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        p = self.probe(x)
        self._warn_train()
        B, cdt = x.shape[0], self.compute_dtype(x)
        known_null = self.fmap.null_dims(p.d_in, p.d_out)
        r = min(p.d_in, p.d_out)
        kk = r if k is None else min(k, r)
        dev = x.device
        out = {
            n: torch.zeros(B, dtype=dt, device=dev)
            for n, dt in (
                ("logvol", torch.float64),
                ("rank", torch.long),
                ("rank_structural", torch.long),
                ("n_rounding", torch.long),
                ("n_dropped", torch.long),
                ("cond_est", torch.float64),
                ("dynamic_pivoting", torch.bool),
                ("nonfinite", torch.bool),
            )
        }
        spec = torch.zeros(B, kk, dtype=torch.float64, device=dev) if want_spectrum else None
        causes: dict[int, str] = {}
        xc, over = self._points(x)
        for i in over.nonzero().flatten().tolist():
            causes[i] = f"the input overflows {cdt}"
        any_dep = False
        eng = self.engine(x)
        bar = tqdm(total=B, desc=desc, unit="pt", disable=not _want_progress(progress, B), leave=False)
        run = None
        try:
            with self._guards(), recording() as backends:
                run = eng.run(xc, chunk_size=chunk_size, progress=bar.update)
                for sl, J, feat in run:
                    bad = (~torch.isfinite(J).flatten(1).all(1)) | (~torch.isfinite(feat).all(1)) | over[sl]
                    for i in bad.nonzero().flatten().tolist():
                        causes.setdefault(
                            sl.start + i,
                            "NaN/Inf in the features"
                            if not bool(torch.isfinite(feat[i]).all())
                            else "NaN/Inf in the Jacobian",
                        )
                    if bool(bad.any()):
                        J = torch.where(bad[:, None, None], torch.zeros_like(J), J)
                    any_dep = any_dep or bool((J != 0).any())
                    f = linalg.factor(
                        J, compute_dtype=cdt, rank_tol=rank_tol, backend=self.backend, known_null=known_null
                    )
                    for n in out:
                        if n != "nonfinite":
                            out[n][sl] = getattr(f, n)
                    out["nonfinite"][sl] = bad
                    if spec is not None:
                        spec[sl] = linalg.spectrum_from_factor(f, r, backend=self.backend)[:, :kk]
                    del f, J
        finally:
            bar.close()
        self._note_coupling(x, run)
        if B and not any_dep and not bool(out["nonfinite"].all()):
            layer = self.fmap.layer
            raise ValueError(
                f"the feature map{'' if layer is None else f' at layer {layer!r}'} does not depend on the "
                "input at these points: its Jacobian is exactly zero at every point (dead or saturated "
                "units, or a layer that is not downstream of the input or is detached from it)"
            )
        nf = out["nonfinite"]
        out["logvol"][nf] = float("nan")
        if spec is not None:
            spec[nf] = float("nan")
        rec = run.record if run is not None else None
        diag = Diagnostics(
            rank=out["rank"],
            rank_structural=out["rank_structural"],
            full_rank=r - known_null,
            cond_est=out["cond_est"],
            n_rounding=out["n_rounding"],
            n_dropped=out["n_dropped"],
            dynamic_pivoting=out["dynamic_pivoting"],
            nonfinite=nf,
            method=rec.engine if rec else getattr(eng, "name", self.method),
            mode=rec.mode if rec else getattr(eng, "mode", ""),
            compute_dtype=cdt,
            d_in=p.d_in,
            d_out=p.d_out,
            chunk=rec.chunk if rec else None,
            points_per_batch=rec.points if rec else None,
            events=rec.events if rec else (),
            reason=rec.reason if rec else "",
            backends=dict(backends),
        )
        return out["logvol"], spec, diag, causes

    # ------------------------------------------------------------------ public methods
    def logvol(
        self,
        x: torch.Tensor,
        *,
        rank_tol: float | None = None,
        normalize: bool = False,
        return_diagnostics: bool = False,
        progress: bool | None = None,
        chunk_size: int | None = None,
        return_stderr: bool = False,
        seed: int | None = None,
        options: dict | None = None,
    ):
        """Log volume element at each point of x (B, *in): float64 ``Tensor[B]`` (see ``fastgeom.logvol``)."""
        if self.method == "randomized":
            if rank_tol is not None:
                raise ValueError("rank_tol applies to the exact methods; method='randomized' needs J of full rank")
            val, err = self._randomized(x, "logvol", seed=seed, progress=progress, options=options)
            if normalize:
                p = self.probe(x)
                val = val - 0.5 * (min(p.d_in, p.d_out) - self.fmap.null_dims(p.d_in, p.d_out)) * math.log(p.d_out)
            return (val, err) if return_stderr else val
        if return_stderr:
            raise ValueError(f"return_stderr=True needs method='randomized' (method {self.method!r} is exact)")
        lv, _, diag, causes = self._exact(
            x, rank_tol=rank_tol, chunk_size=chunk_size, progress=progress, desc="logvol", want_spectrum=False
        )
        if normalize:
            lv = lv - 0.5 * diag.rank.to(torch.float64) * math.log(diag.d_out)
        warn(diag, rank_tol, causes)
        return (lv, diag) if return_diagnostics else lv

    def spectrum(
        self,
        x: torch.Tensor,
        k: int | None = None,
        *,
        rank_tol: float | None = None,
        normalize: bool = False,
        return_diagnostics: bool = False,
        progress: bool | None = None,
        chunk_size: int | None = None,
        seed: int | None = None,
        options: dict | None = None,
    ):
        """Singular values of J, descending: float64 ``Tensor[B, r]`` (r = min(d_in, d_out), or k)."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive int or None, got {k!r}")
        if self.method == "randomized":
            if k is None:
                raise ValueError("method='randomized' estimates the top-k singular values: pass k=")
            if rank_tol is not None:
                raise ValueError("rank_tol applies to the exact methods, not method='randomized'")
            s = self._randomized(x, "spectrum", k=k, seed=seed, progress=progress, options=options)
            return s / math.sqrt(self.probe(x).d_out) if normalize else s
        _, s, diag, causes = self._exact(
            x, rank_tol=rank_tol, chunk_size=chunk_size, progress=progress, desc="spectrum", want_spectrum=True, k=k
        )
        if normalize:
            s = s / math.sqrt(diag.d_out)
        warn(diag, rank_tol, causes)
        return (s, diag) if return_diagnostics else s

    def jacobian(self, x: torch.Tensor, *, progress: bool | None = None, chunk_size: int | None = None) -> torch.Tensor:
        """Jacobian of the feature map, float64 ``Tensor[B, d_out, d_in]`` (for models small enough to hold it)."""
        return self._blocks(x, progress, chunk_size, "jacobian", lambda J: J)

    def metric(
        self, x: torch.Tensor, *, normalize: bool = False, progress: bool | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Pullback metric g = J^T J, float64 ``Tensor[B, d_in, d_in]`` (divided by d_out if normalize)."""
        g = self._blocks(x, progress, chunk_size, "metric", lambda J: J.mT @ J)
        d_out = self.probe(x).d_out
        return g / d_out if normalize and d_out else g

    def _blocks(self, x, progress, chunk_size, desc, reduce):
        if self.method == "randomized":
            raise ValueError("method='randomized' does not materialise J; use an exact method for jacobian/metric")
        p = self.probe(x)
        self._warn_train()
        B = x.shape[0]
        shape = (p.d_out, p.d_in) if desc == "jacobian" else (p.d_in, p.d_in)
        res = torch.empty(B, *shape, dtype=torch.float64, device=x.device)
        if B == 0:
            return res
        xc, over = self._points(x)
        eng = self.engine(x)
        bar = tqdm(total=B, desc=desc, unit="pt", disable=not _want_progress(progress, B), leave=False)
        run = None
        try:
            with self._guards():
                run = eng.run(xc, chunk_size=chunk_size, progress=bar.update)
                for sl, J, _ in run:
                    res[sl] = reduce(J)
        finally:
            bar.close()
        self._note_coupling(x, run)
        bad = over | ~torch.isfinite(res.flatten(1)).all(1)
        if bool(bad.any()):
            res[bad] = float("nan")
            idx = bad.nonzero().flatten().tolist()
            from .diagnostics import NonFiniteWarning

            warnings.warn(
                f"{len(idx)} point(s) gave non-finite values and are NaN: {fmt_points(idx)}",
                NonFiniteWarning,
                stacklevel=3,
            )
        return res

    def _randomized(self, x, what: str, **kw):
        from . import randomized

        p = self.probe(x)
        self._warn_train()
        xc, over = self._points(x)
        if bool(over.any()):
            raise ValueError(
                f"x overflows {self.compute_dtype(x)} at point(s) "
                f"{fmt_points(over.nonzero().flatten().tolist())}; method='randomized' needs finite inputs"
            )
        key = self._key(x)
        if key not in self._random_passes:
            self._random_passes[key] = randomized.pass_factory(self.fmap, p.d_out)
        make_pass = self._random_passes[key]
        opts = dict(kw.pop("options") or {})
        if p.coupled:
            opts["points_per_batch"] = 1  # each point alone
        kw.update(make_pass=make_pass, on_coupled=lambda: self._mark_coupled(x))
        with self._guards():
            if what == "logvol":
                return randomized.logvol(self.fmap, xc, p.d_in, p.d_out, **kw, **opts)
            return randomized.spectrum(self.fmap, xc, p.d_in, p.d_out, **kw, **opts)

    # ------------------------------------------------------------------ curvature and paths (fastgeom.surfaces/paths)
    def _jet(self, x: torch.Tensor, d_out: int):
        """The curvature functions' jet pass for points shaped like x, or False (nested JVPs). Built and validated
        (``surfaces.jet_graph``) once this handle has been asked for ``JET_MIN_POINTS`` points of that key, then
        reused: its trace and first-point check cost about as much as the nested route on tens of points (4 ms
        on an 8-32-32-19 MLP, 0.16 s on a width-8 ResNet-18 in float32), so small one-off calls skip it."""
        from . import surfaces

        if not x.shape[0]:
            return False
        key = self._key(x)
        if key not in self._jets:
            self._curv_points[key] = seen = self._curv_points.get(key, 0) + x.shape[0]
            if seen < JET_MIN_POINTS:
                return False
            with eval_mode(self.model), no_tf32():
                self._jets[key] = surfaces.jet_graph(self.fmap, x, d_out) or False
        return self._jets[key]

    def gaussian_curvature(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor,
        *,
        return_metric: bool = False,
        chunk_size: int | None = None,
        progress: bool | None = None,
    ):
        """Gaussian curvature (B,) of the input planes x + a u + b v (see ``fastgeom.surfaces.gaussian_curvature``)."""
        from . import surfaces

        p = self.probe(x)
        self._warn_train()
        with ad_guards():  # saturation-stable activation derivatives (engine.stable)
            return surfaces.gaussian_curvature_fmap(
                self.fmap,
                x,
                u,
                v,
                return_metric=return_metric,
                chunk_size=chunk_size,
                budget=self.budget,
                progress=progress,
                max_points=1 if p.coupled else None,
                jet=lambda: self._jet(x, p.d_out),
                on_coupled=lambda: self._mark_coupled(x),
            )

    def scalar_curvature(self, x: torch.Tensor, *, chunk_size: int | None = None, progress: bool | None = None):
        """Ricci scalar (B,) of the full pullback metric of an immersion (``fastgeom.surfaces.scalar_curvature``)."""
        from . import surfaces

        p = self.probe(x)
        self._warn_train()
        with ad_guards():  # saturation-stable activation derivatives (engine.stable)
            return surfaces.scalar_curvature_fmap(
                self.fmap,
                x,
                p.d_out,
                chunk_size=chunk_size,
                budget=self.budget,
                progress=progress,
                max_points=1 if p.coupled else None,
                jet=lambda: self._jet(x, p.d_out),
                on_coupled=lambda: self._mark_coupled(x),
            )

    def path_length(self, path: torch.Tensor, *, per_segment: bool = False, rtol: float = 1e-8, pieces: int = 4):
        """Feature-space length of the polyline `path` (T, *in) (see ``fastgeom.paths.path_length``)."""
        from . import paths

        paths.check_path(path)
        self.probe(path)
        self._warn_train()
        with ad_guards():  # saturation-stable activation derivatives (engine.stable)
            return paths.path_length_fmap(
                self.fmap, path, per_segment=per_segment, rtol=rtol, pieces=pieces, budget=self.budget
            )

    def geodesic(
        self,
        x0: torch.Tensor,
        x1: torch.Tensor,
        *,
        n: int = 32,
        max_iter: int = 500,
        tol: float = 1e-10,
        rtol: float = 1e-8,
    ):
        """Discrete geodesic from x0 to x1 (each (*in)) (see ``fastgeom.paths.geodesic``)."""
        from . import paths

        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"x0 must be a torch.Tensor of shape input_shape, got {type(x0).__name__}")
        self.probe(x0[None])
        self._warn_train()
        with ad_guards():  # saturation-stable activation derivatives (engine.stable)
            return paths.geodesic_fmap(
                self.fmap, x0, x1, n=n, max_iter=max_iter, tol=tol, rtol=rtol, budget=self.budget
            )
