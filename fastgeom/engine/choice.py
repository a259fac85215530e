"""The engine choice: ``select(method, ...)`` -> an engine whose ``run(x)`` yields float64 J blocks.

Engines (each ``run(x, chunk_size, progress)`` is an iterable of (points slice, J (P, d_out, d_in),
features (P, d_out)) with a ``record`` of what ran, see ``streamed.Record``):

- ``DenseEngine``: torch.func jacrev/jacfwd vmapped over a point batch (the reference).
- ``StreamedEngine`` (streamed.py): chunked torch.func VJPs/JVPs; with ``make_pass`` from
  ``linear_net.validated_linearize`` it is the ``linearized`` engine.
- ``AutoEngine``: starts as ``streamed`` and times its first chunk. When the estimated work of the
  run is large enough for the linearised engine's set-up (trace, fold, validate) to pay
  (``LINEARIZE_MIN_SECONDS``), it builds that engine once, times one chunk of it on the same points,
  and keeps whichever was faster per direction (both are exact). Only ``LinearizeError`` (the model
  cannot be linearised) is an expected failure; any other exception warns once, naming it, and falls
  back, or re-raises when ``FASTGEOM_STRICT=1``. The record's ``reason`` says what was decided and why.
"""

from __future__ import annotations

import os
import time
import warnings

import torch

from .. import checks
from .dense import jacobian_dense
from .linear_net import LinearizeError, validated_linearize
from .planner import is_oom, plan
from .streamed import Record, StreamedEngine

EXACT_METHODS = ("dense", "streamed", "linearized")
LINEARIZE_MIN_SECONDS = 1.5  # estimated streamed work of a run above which auto tries the linearised engine
SWITCH_GAIN = 0.9  # the linearised pass must take at most this fraction of the autograd pass's time


class EngineWarning(UserWarning):
    """The fast path failed unexpectedly and the engine fell back (set FASTGEOM_STRICT=1 to raise)."""


def strict() -> bool:
    return os.environ.get("FASTGEOM_STRICT", "") not in ("", "0")


class DenseEngine:
    """torch.func jacrev (d_out <= d_in) or jacfwd over point batches sized by the planner."""

    name = "dense"

    def __init__(self, fmap, x1, d_in: int, d_out: int, *, budget=None, mode=None, act_bytes=None):
        self.fmap, self.d_in, self.d_out = fmap, d_in, d_out
        passes = d_out if (mode or ("reverse" if d_out <= d_in else "forward")) == "reverse" else d_in
        self.plan = plan(fmap, x1, d_in, d_out, chunk_size=passes, budget=budget, mode=mode, act_bytes=act_bytes)
        self.mode = "jacrev" if self.plan.mode == "reverse" else "jacfwd"
        self.points: int | None = None  # points per batch (None: from the plan's budget)

    def run(self, x, chunk_size=None, progress=None):
        if chunk_size is not None:
            raise ValueError(
                "chunk_size applies to the streamed and linearized methods; method='dense' "
                "materialises every row or column of J at once"
            )
        return _DenseRun(self, x, progress)


class _DenseRun:
    def __init__(self, eng: DenseEngine, x, progress):
        self.eng, self.x, self.progress = eng, x, progress
        per_batch = eng.points or eng.plan.budget // max(eng.plan.point_bytes, 1)
        self.points = max(1, min(x.shape[0], per_batch))
        self.events: list[str] = []
        self.coupled = False  # as streamed.Run: a coupled batch sends the rest point by point

    @property
    def record(self) -> Record:
        return Record(engine="dense", mode=self.eng.mode, chunk=None, points=self.points, events=tuple(self.events))

    def __iter__(self):
        eng, x, B, s = self.eng, self.x, self.x.shape[0], 0
        while s < B:
            xb = x[s : s + self.points]
            P = xb.shape[0]
            J = jacobian_dense(eng.fmap, xb, eng.d_out, forward=eng.mode == "jacfwd").to(torch.float64)
            with torch.no_grad():
                feat = eng.fmap(xb).reshape(P, -1)
            j = checks.batch_feature_coupled(eng.fmap, xb, feat) if P > 1 else None
            if j is not None:
                self.coupled = True
                self.events.append(
                    f"batch coupling: point {s + j} alone differs from inside points {s}..{s + P - 1}; "
                    f"points per batch {self.points} -> 1"
                )
                checks.warn_coupled_batch(s, s + P, j, stacklevel=3)
                self.points = eng.points = 1
                continue
            yield slice(s, s + P), J, feat
            if self.progress is not None:
                self.progress(P)
            s += P


class AutoEngine(StreamedEngine):
    """``method="auto"``: streamed, switching to the linearised engine when that pays (module docstring)."""

    def __init__(self, fmap, x1, d_in, d_out, **kw):
        super().__init__(fmap, x1, d_in, d_out, name="streamed", **kw)
        self.autograd_pass = self.make_pass
        self.linear_pass = None  # built on demand
        self.decided = False
        self.per_direction: float | None = None  # seconds per (point, direction) of the autograd pass
        self._trial_build = 0.0
        self.reason = "auto: the run was too small for the linearised engine's set-up to pay"

    def run(self, x, chunk_size=None, progress=None):
        r = super().run(x, chunk_size, progress)
        r.total = x.shape[0] * (self.d_out if self.mode == "reverse" else self.d_in)
        r.done = 0
        return r

    def after_chunk(self, run, xb, lin, seconds, k):
        run.done += k * xb.shape[0]
        if self.decided:
            return lin
        rate = seconds / max(k * xb.shape[0], 1)
        if self.linear_pass is None:
            self.per_direction = rate if self.per_direction is None else min(self.per_direction, rate)
        else:  # this chunk was the linearised engine's trial (its forward pass included, as in the autograd's)
            rate = (seconds + self._trial_build) / max(k * xb.shape[0], 1)
            self.decided = True
            assert self.per_direction is not None
            if rate <= SWITCH_GAIN * self.per_direction:
                self.name = run.name = "linearized"
                self.reason = run.reason = (
                    f"auto: linearized took {rate / self.per_direction:.2f}x the autograd pass's time per direction"
                )
                self.make_pass = self.linear_pass
                return lin
            self.reason = run.reason = (
                f"auto: linearized took {rate / self.per_direction:.2f}x the autograd "
                "pass's time per direction; kept streamed"
            )
            self.make_pass = self.autograd_pass
            return self.autograd_pass(xb, self.mode)
        remaining = (run.total - run.done) * self.per_direction
        if run.done >= run.total or remaining < LINEARIZE_MIN_SECONDS:
            return lin
        try:
            self.linear_pass = validated_linearize(self.fmap, xb, self.d_out)
            t0 = time.perf_counter()
            trial = self.linear_pass(xb, self.mode)
            self._trial_build = time.perf_counter() - t0
            return trial
        except LinearizeError as e:
            self.reason = run.reason = f"auto: streamed, the model cannot be linearised: {e}"
        except Exception as e:  # noqa: BLE001 - a bug in the fast path: loud, then the exact fallback
            if is_oom(e) or strict():
                raise
            self.reason = run.reason = f"auto: streamed, the linearised engine failed ({type(e).__name__}: {e})"
            warnings.warn(
                f"the linearised engine failed unexpectedly ({type(e).__name__}: {e}); using the "
                "streamed engine (exact, slower). Set FASTGEOM_STRICT=1 to raise instead.",
                EngineWarning,
                stacklevel=2,
            )
        self.linear_pass = None
        self.decided = True
        return lin


def select(method: str, fmap, x1: torch.Tensor, d_in: int, d_out: int, *, budget=None, mode=None, act_bytes=None):
    """The engine of ``method`` for points shaped like x1 (1, *in); ``act_bytes`` from the probe."""
    kw = dict(budget=budget, mode=mode, act_bytes=act_bytes)
    if method == "dense":
        return DenseEngine(fmap, x1, d_in, d_out, **kw)
    if method == "streamed":
        return StreamedEngine(fmap, x1, d_in, d_out, reason="method='streamed'", **kw)
    if method == "linearized":
        lin = validated_linearize(fmap, x1, d_out)
        return StreamedEngine(
            fmap, x1, d_in, d_out, make_pass=lin, name="linearized", reason="method='linearized'", **kw
        )
    if method == "auto":
        return AutoEngine(fmap, x1, d_in, d_out, **kw)
    raise ValueError(f"unknown exact method {method!r}; choose one of 'auto', {', '.join(map(repr, EXACT_METHODS))}")
