"""Streamed exact Jacobians: points batched, cotangents (VJPs) or tangents (JVPs) in chunks.

Reverse mode runs one forward pass per point batch and ``vmap``s the VJP over a chunk of one-hot
cotangents (rows of J for every point at once); forward mode ``vmap``s JVPs over one-hot tangents
(columns of J). Each chunk is written into a float64 J of the point batch, then freed. An
out-of-memory error halves the chunk (then the point batch) and retries the same rows/columns, so
results equal those of an uninterrupted run up to rounding (only the vmap batch size changes, which
may change the BLAS blocking, about 1e-16 relative).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.func import jvp, vjp, vmap

from .planner import Plan, is_oom

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


class AutogradPass:
    """J of a point batch through torch.func: ``vjp`` (K, P, d_out) -> (K, P, *in), ``jvp`` the reverse.

    Reverse mode runs the forward pass once (``torch.func.vjp``) and vmaps the VJP over cotangents;
    forward mode vmaps ``torch.func.jvp`` (which re-runs the primal with every chunk). The
    linearised engine (``linear_net.Linearization``) has the same two methods."""

    def __init__(self, fmap, xb: torch.Tensor, mode: str):
        self.fmap, self.xb = fmap, xb
        self.out_dtype = xb.dtype
        if mode == "reverse":
            _inject("forward")
            out, self._vjp_fn = vjp(fmap, xb)
            self.out_dtype = out.dtype

    def vjp(self, C: torch.Tensor) -> torch.Tensor:
        return vmap(self._vjp_fn)(C)[0]

    def jvp(self, T: torch.Tensor) -> torch.Tensor:
        return vmap(lambda t: jvp(self.fmap, (self.xb,), (t,))[1])(T)


def _batch_jacobian(fmap, xb: torch.Tensor, d_out: int, plan: Plan, linearize=None) -> torch.Tensor:
    """float64 J (Pb, d_out, d_in) of one point batch; adapts plan.chunk on OOM.

    ``linearize(xb, mode)``: an object with ``vjp``/``jvp`` over K directions (default AutogradPass)."""
    Pb = xb.shape[0]
    in_shape = xb.shape[1:]
    d_in = xb[0].numel()
    J = torch.empty(Pb, d_out, d_in, dtype=torch.float64, device=xb.device)
    if linearize is None:
        lin = AutogradPass(fmap, xb, plan.mode)
    else:
        _inject("forward")
        lin = linearize(xb, plan.mode)
    total = d_out if plan.mode == "reverse" else d_in
    start = 0
    while start < total:
        k = min(plan.chunk, total - start)
        try:
            _inject("chunk")
            if plan.mode == "reverse":
                cot = _one_hot(k, start, Pb, d_out, lin.out_dtype, xb.device)
                g = lin.vjp(cot)
                J[:, start:start + k, :] = g.reshape(k, Pb, d_in).permute(1, 0, 2)
            else:
                tan = _one_hot(k, start, Pb, d_in, xb.dtype, xb.device).reshape(k, Pb, *in_shape)
                cols = lin.jvp(tan)
                J[:, :, start:start + k] = cols.reshape(k, Pb, d_out).permute(1, 2, 0)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e) or plan.chunk == 1:
                raise
            plan.chunk = max(1, plan.chunk // 2)
            _free_cache(xb.device)
            continue
        start += k
    return J


def jacobian_blocks(fmap, x: torch.Tensor, d_out: int, plan: Plan,
                    progress: Callable[[int], None] | None = None, linearize=None) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (points slice, float64 J (Pb, d_out, d_in)) over x (B, *input_shape) in point batches."""
    B = x.shape[0]
    s = 0
    while s < B:
        e = min(B, s + plan.points)
        try:
            J = _batch_jacobian(fmap, x[s:e], d_out, plan, linearize)
        except Exception as err:  # noqa: BLE001
            if is_oom(err) and plan.points > 1:
                plan.points = max(1, plan.points // 2)
                _free_cache(x.device)
                continue
            if is_oom(err):
                raise MemoryError(
                    f"out of memory even at 1 point and chunk 1 (budget {plan.budget / 2**20:.0f} MiB); "
                    "the model's single forward/backward pass does not fit: use a smaller dtype or device with more memory"
                ) from err
            raise
        yield slice(s, e), J
        if progress is not None:
            progress(e - s)
        s = e
