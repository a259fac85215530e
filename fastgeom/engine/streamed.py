"""Streamed exact Jacobians: points batched, cotangents (VJPs) or tangents (JVPs) in chunks.

A *pass* is J of one point batch as a linear map over K directions at once: ``vjp(C (K, P, d_out))
-> (K, P, *in)`` (rows of J) and ``jvp(T (K, P, *in)) -> (K, P, d_out)`` (columns), plus the
features ``feature`` (P, d_out). ``AutogradPass`` is the torch.func one (any model);
``linear_net.Linearization`` is the hand-written one of a traced, linearised network. Both serve
the exact engine and ``fastgeom.randomized``.

``StreamedEngine.run(x)`` walks x in point batches and fills a float64 J per batch chunk by chunk.
An out-of-memory error halves the chunk (then the point batch) and retries the same rows/columns,
so results equal those of an uninterrupted run up to rounding (only the vmap batch size changes,
which may change the BLAS blocking, about 1e-16 relative). Each halving is an event of the run's
``Record``; the engine starts its next run from the halved sizes.

Batch coupling: each point batch of more than one point checks one of its points (the last) computed
alone against its feature inside the batch (``checks.batch_feature_coupled``: one single-point forward
per batch, under no_grad). On a mismatch the batch is not yielded: it and every later point are
recomputed one at a time, the run's ``coupled`` is set, its record gets the event and a
``BatchCouplingWarning`` names the points; the engine stays point by point for later runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.func import jvp, vjp

from .. import checks
from .batching import vmap
from .planner import Plan, is_oom, plan

# Tests set this to a callable(stage: str) that may raise, to inject faults such as an OOM.
fault_injector: Callable[[str], None] | None = None


def _inject(stage: str) -> None:
    if fault_injector is not None:
        fault_injector(stage)


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _one_hot(k: int, start: int, B: int, dim: int, dtype, device) -> torch.Tensor:
    e = torch.zeros(k, B, dim, dtype=dtype, device=device)
    e[torch.arange(k, device=device), :, start + torch.arange(k, device=device)] = 1
    return e


@dataclass(frozen=True)
class Record:
    """What an exact run did: engine, mode, final chunk and point batch, OOM halvings, why this engine."""

    engine: str  # "dense" | "streamed" | "linearized"
    mode: str  # "reverse" | "forward" ("jacrev" | "jacfwd" for dense)
    chunk: int | None  # directions per pass at the end of the run (None for dense)
    points: int  # points per batch at the end of the run
    events: tuple[str, ...] = ()  # e.g. "out of memory: chunk 64 -> 32"
    reason: str = ""  # why this engine ran (auto's choice, or a fallback's cause)


class AutogradPass:
    """J of a point batch xb (P, *in) through torch.func: reverse mode runs the forward once
    (``torch.func.vjp``) and vmaps the VJP; forward mode vmaps ``torch.func.jvp``."""

    def __init__(self, fmap, xb: torch.Tensor, mode: str):
        self.fmap, self.xb = fmap, xb
        self._vjp_fn: Callable | None = None
        self._feature: torch.Tensor | None = None
        if mode == "reverse":
            self._forward()

    def _forward(self) -> None:
        out, self._vjp_fn = vjp(self.fmap, self.xb)  # type: ignore[misc]  # 2-tuple without has_aux
        self._feature = out.detach()

    @property
    def feature(self) -> torch.Tensor:
        """phi(xb) (P, d_out)."""
        if self._feature is None:
            with torch.no_grad():
                self._feature = self.fmap(self.xb)
        assert self._feature is not None
        return self._feature

    @property
    def out_dtype(self) -> torch.dtype:
        return self.feature.dtype

    def vjp(self, C: torch.Tensor) -> torch.Tensor:
        if self._vjp_fn is None:
            self._forward()
        assert self._vjp_fn is not None
        return vmap(self._vjp_fn, key="streamed: vmap over cotangents")(C)[0]

    def jvp(self, T: torch.Tensor) -> torch.Tensor:
        return vmap(lambda t: jvp(self.fmap, (self.xb,), (t,))[1], key="streamed: vmap over tangents")(T)


class Pass(Protocol):
    """J of one point batch over K directions at once (AutogradPass, linear_net.Linearization)."""

    @property
    def out_dtype(self) -> torch.dtype: ...

    @property
    def feature(self) -> torch.Tensor: ...  # (P, d_out)

    def vjp(self, C: torch.Tensor) -> torch.Tensor: ...  # (K, P, d_out) -> (K, P, *in)

    def jvp(self, T: torch.Tensor) -> torch.Tensor: ...  # (K, P, *in) -> (K, P, d_out)


PassFactory = Callable[[torch.Tensor, str], Pass]  # (xb, mode) -> the pass of a point batch


class StreamedEngine:
    """Exact J in point batches and direction chunks within a memory budget (see module docstring).

    ``make_pass(xb, mode)`` builds the pass of a point batch (default ``AutogradPass``); ``name`` is
    what ``Record.engine`` reports."""

    def __init__(
        self,
        fmap,
        x1: torch.Tensor,
        d_in: int,
        d_out: int,
        *,
        budget: int | None = None,
        mode: str | None = None,
        make_pass: PassFactory | None = None,
        name: str = "streamed",
        reason: str = "",
        act_bytes: tuple[int, int] | None = None,
    ):
        self.fmap, self.d_in, self.d_out = fmap, d_in, d_out
        self.name, self.reason = name, reason
        self.make_pass = make_pass or (lambda xb, m: AutogradPass(fmap, xb, m))
        self.plan: Plan = plan(fmap, x1, d_in, d_out, budget=budget, mode=mode, act_bytes=act_bytes)
        self.mode = self.plan.mode
        self.chunk = self.plan.chunk
        self.points: int | None = None  # points per batch (None: from the plan's budget, capped by B)

    def sizes(self, B: int, chunk_size: int | None) -> tuple[int, int]:
        """(chunk, points per batch) a run over B points starts from."""
        passes = self.d_out if self.mode == "reverse" else self.d_in
        chunk = min(chunk_size, passes) if chunk_size is not None else self.chunk
        points = self.points or max(1, self.plan.budget // max(self.plan.unit * chunk + self.plan.fixed, 1))
        return chunk, max(1, min(B, points))

    def run(self, x: torch.Tensor, chunk_size: int | None = None, progress: Callable[[int], None] | None = None) -> Run:
        return Run(self, x, chunk_size, progress)

    # hook for AutoEngine: called after each chunk with its wall time; may return a new pass for the batch
    def after_chunk(self, run: Run, xb: torch.Tensor, lin: Pass, seconds: float, k: int) -> Pass:
        return lin


class Run:
    """One pass of a ``StreamedEngine`` over x: iterate for (points slice, float64 J (P, d_out, d_in),
    features (P, d_out)); ``record`` says what ran (final chunk and batch, events)."""

    def __init__(self, engine: StreamedEngine, x: torch.Tensor, chunk_size, progress):
        self.engine, self.x, self.progress = engine, x, progress
        self.chunk, self.points = engine.sizes(x.shape[0], chunk_size)
        self.events: list[str] = []
        self.name = engine.name
        self.reason = engine.reason
        self.coupled = False  # a point batch was found coupled (then everything after it ran point by point)

    @property
    def record(self) -> Record:
        return Record(
            engine=self.name,
            mode=self.engine.mode,
            chunk=self.chunk,
            points=self.points,
            events=tuple(self.events),
            reason=self.reason,
        )

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        x, eng = self.x, self.engine
        B, s = x.shape[0], 0
        while s < B:
            e = min(B, s + self.points)
            try:
                J, feat = self._batch(x[s:e])
            except Exception as err:  # noqa: BLE001
                if is_oom(err) and self.points > 1:
                    self.events.append(f"out of memory: points per batch {self.points} -> {max(1, self.points // 2)}")
                    self.points = max(1, self.points // 2)
                    _free_cache(x.device)
                    continue
                if is_oom(err):
                    raise MemoryError(
                        f"out of memory even at 1 point and chunk 1 (budget {eng.plan.budget / 2**20:.0f} MiB); "
                        "the model's single forward/backward pass does not fit: use a smaller dtype or device "
                        "with more memory"
                    ) from err
                raise
            j = checks.batch_feature_coupled(eng.fmap, x[s:e], feat) if e - s > 1 else None
            if j is not None:  # coupled across the batch: this batch and the rest point by point
                self.coupled = True
                self.events.append(
                    f"batch coupling: point {s + j} alone differs from inside points {s}..{e - 1}; "
                    f"points per batch {self.points} -> 1"
                )
                checks.warn_coupled_batch(s, e, j, stacklevel=3)
                self.points = eng.points = 1
                continue
            yield slice(s, e), J, feat
            if self.progress is not None:
                self.progress(e - s)
            s = e
        # the next run of this engine starts from what fitted
        eng.chunk = min(eng.chunk, self.chunk)
        if any("points per batch" in ev for ev in self.events):
            eng.points = self.points

    def _batch(self, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eng = self.engine
        P, in_shape, d_in, d_out, mode = xb.shape[0], xb.shape[1:], eng.d_in, eng.d_out, eng.mode
        J = torch.empty(P, d_out, d_in, dtype=torch.float64, device=xb.device)
        t0 = time.perf_counter()
        _inject("forward")
        lin = eng.make_pass(xb, mode)
        total, start = (d_out if mode == "reverse" else d_in), 0
        while start < total:
            k = min(self.chunk, total - start)
            try:
                _inject("chunk")
                if mode == "reverse":
                    g = lin.vjp(_one_hot(k, start, P, d_out, lin.out_dtype, xb.device))
                    J[:, start : start + k, :] = g.reshape(k, P, d_in).permute(1, 0, 2)
                else:
                    cols = lin.jvp(_one_hot(k, start, P, d_in, xb.dtype, xb.device).reshape(k, P, *in_shape))
                    J[:, :, start : start + k] = cols.reshape(k, P, d_out).permute(1, 2, 0)
            except Exception as e:  # noqa: BLE001
                if not is_oom(e) or self.chunk == 1:
                    raise
                self.events.append(f"out of memory: chunk {self.chunk} -> {max(1, self.chunk // 2)}")
                self.chunk = max(1, self.chunk // 2)
                _free_cache(xb.device)
                continue
            start += k
            t1 = time.perf_counter()
            lin = eng.after_chunk(self, xb, lin, t1 - t0, k)
            t0 = time.perf_counter()
        return J, lin.feature.reshape(P, -1)
