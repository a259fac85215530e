"""Shallow-network geometry op; candidates ``cuda``, ``triton`` (CUDA tensors), ``cpp``, ``torch`` (ops.dispatch).

The fused op (``geometry``) evaluates, per point, the metric g (d, d), log volume element and
true Ricci scalar of Phi(x) = sigma(x W^T + b)/sqrt(n) for small input dimension
d <= ``FUSED_MAX_D``, in one kernel: pass 1 over hidden units is a streaming Givens QR of the rows
sigma'(z_j) w_j / sqrt(n) (R^T R = g, L = R^T; g is never factored, so cond is not squared); pass 2
accumulates the whitened third-moment sums T = sum_j P_j u_j^(x3) and v = sum_j P_j |u_j|^2 u_j
(u_j = L^-1 w_j) and finishes R = (|T|^2 - |v|^2) / n^2, algebraically equal to the Gram form of
MATH 3.5 (see docs/SHALLOW.md).

Larger d, n < d, and activations without a kernel code run the reference (``fusable`` says why):
``auto`` takes it, an explicit fused backend raises naming the rule. For large d the reference
computes the log volume by pivoted QR of diag(sigma') W / sqrt(n) in tiles of points
(fastgeom.linalg.factor, whose QR itself uses fastgeom._C when built).
"""

from __future__ import annotations

import torch

from .. import dispatch as _d
from . import reference

FUSED_MAX_D = 4
BACKENDS = _d.BACKENDS
OP = "shallow_geometry"


def fusable(
    device: torch.device, dtype: torch.dtype | None = None, *, act=None, d: int = 0, n: int | None = None, **ctx
) -> str | None:
    """The fused kernels need a built-in activation, d <= FUSED_MAX_D and n >= d (an immersion; the
    pseudo-volume of n < d goes through the reference)."""
    if act is None or act.code is None:
        return f"no fused kernel for the activation {getattr(act, 'name', act)!r} (built-in activations only)"
    if d > FUSED_MAX_D:
        return f"the fused kernels need input dimension d <= {FUSED_MAX_D}, got d = {d}"
    if n is not None and n < d:
        return f"the fused kernels need n >= d hidden units (an immersion), got n = {n} < d = {d}"
    return None


def _torch(W, b, x, act, want):
    out = {}
    if "metric" in want:
        out["metric"] = reference.metric(W, b, x, act)
    if "logvol" in want:
        out["logvol"] = reference.log_volume_element(W, b, x, act)
    if "ricci" in want:
        out["ricci"] = reference.ricci_scalar_auto(W, b, x, act)
    return out


def _triton(W, b, x, act, want):
    from . import triton as _tr

    g, lv, R = _tr.geometry(W, b, x, act.code, act.power, "ricci" in want)
    return {"metric": g, "logvol": lv, "ricci": R}


def _compiled(W, b, x, act, want):
    g, lv, R = torch.ops.fastgeom.shallow_geometry(
        W.contiguous(), b.contiguous(), x.contiguous(), int(act.code), int(act.power), "ricci" in want
    )
    return {"metric": g, "logvol": lv, "ricci": R}


GEOMETRY = _d.Op(
    OP,
    [
        _d.Impl("cuda", _compiled, _d.all_of(fusable, _d.compiled_cuda(OP))),
        _d.Impl("triton", _triton, _d.all_of(fusable, _d.triton_on_device()), auto_devices=("cuda",)),
        _d.Impl("cpp", _compiled, _d.all_of(fusable, _d.compiled_cpu(OP))),
        _d.Impl("torch", _torch, _d.always),
    ],
)

OPS = (GEOMETRY,)


def pick(backend: str, act, d: int, device: torch.device, n: int | None = None) -> str:
    """The implementation ``geometry`` runs for ``backend``: 'torch', 'triton', 'cpp' or 'cuda'
    (raises RuntimeError naming why when an explicit backend cannot run this case here)."""
    return GEOMETRY.pick(backend, device, None, act=act, d=d, n=n)


def geometry(W, b, x, act, backend: str = "auto", want=("metric", "logvol", "ricci")):
    """dict with the requested of 'metric' (N, d, d), 'logvol' (N,), 'ricci' (N,) (true convention)."""
    res = GEOMETRY(
        W,
        b,
        x,
        act,
        want,
        backend=backend,
        device=x.device,
        dtype=x.dtype,
        ctx={"act": act, "d": W.shape[1], "n": W.shape[0]},
    )
    return {k: res[k] for k in want}
