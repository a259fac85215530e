"""Shallow-network geometry op: dispatch between the torch reference, Triton and fastgeom._C.

The fused op (``geometry``) evaluates, per point, the metric g (d, d), log volume element and
true Ricci scalar of Phi(x) = sigma(x W^T + b)/sqrt(n) for small input dimension
d <= ``FUSED_MAX_D``, in one kernel: pass 1 over hidden units is a streaming Givens QR of the rows
sigma'(z_j) w_j / sqrt(n) (R^T R = g, L = R^T; g is never factored, so cond is not squared); pass 2 accumulates the whitened third-moment sums
T = sum_j P_j u_j^(x3) and v = sum_j P_j |u_j|^2 u_j (u_j = L^-1 w_j) and finishes
R = (|T|^2 - |v|^2) / n^2, algebraically equal to the Gram form of MATH 3.5 (see docs/SHALLOW.md).
Larger d, n < d, and activations without a kernel code use the reference for every backend
(for large d the reference computes the log volume by pivoted QR of diag(sigma') W / sqrt(n) in tiles
of points, fastgeom.linalg.factor, whose QR itself uses fastgeom._C when built).
"""
from __future__ import annotations

import torch

from ..._ext import backend_usable, ext, require
from . import reference

FUSED_MAX_D = 4
BACKENDS = ("torch", "triton", "cpp", "cuda", "auto")
OP = "shallow_geometry"


def _triton_ok(device: torch.device) -> bool:
    ok, _ = backend_usable("triton")
    return ok and (device.type == "cuda" or not torch.cuda.is_available())


def pick(backend: str, act, d: int, device: torch.device, n: int | None = None) -> str:
    """Resolve ``backend`` to the implementation that runs: 'torch', 'triton', 'cpp' or 'cuda'.

    The fused kernels need a built-in activation, d <= FUSED_MAX_D and n >= d (an immersion; the
    pseudo-volume of n < d goes through the reference)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    fusable = act.code is not None and d <= FUSED_MAX_D and (n is None or n >= d)
    if backend == "auto":
        if not fusable:
            return "torch"
        if device.type == "cuda":
            if ext.with_cuda and ext.has_op(OP):
                return "cuda"
            if _triton_ok(device):
                return "triton"
            return "torch"
        if ext.has_op(OP):
            return "cpp"
        return "torch"
    if backend == "torch":
        return "torch"
    require(backend, device)
    if backend in ("cpp", "cuda") and not ext.has_op(OP):
        raise RuntimeError(f"backend {backend!r}: fastgeom._C was built without the {OP} op; rebuild the "
                           "extension (`FASTGEOM_BUILD_CUDA=0 python setup.py build_ext --inplace`)")
    if backend == "cpp" and device.type != "cpu":
        raise RuntimeError("backend 'cpp' runs on CPU tensors; move the inputs to CPU or use backend='cuda'")
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError("backend 'cuda' needs CUDA tensors; move W, b, x to a GPU or use backend='cpp'")
    return backend if fusable else "torch"


def geometry(W, b, x, act, backend: str = "auto", want=("metric", "logvol", "ricci")):
    """dict with the requested of 'metric' (N, d, d), 'logvol' (N,), 'ricci' (N,) (true convention)."""
    impl = pick(backend, act, W.shape[1], x.device, W.shape[0])
    if impl == "torch":
        out = {}
        if "metric" in want:
            out["metric"] = reference.metric(W, b, x, act)
        if "logvol" in want:
            out["logvol"] = reference.log_volume_element(W, b, x, act)
        if "ricci" in want:
            out["ricci"] = reference.ricci_scalar_auto(W, b, x, act)
        return out
    if impl == "triton":
        from . import triton as _tr
        g, lv, R = _tr.geometry(W, b, x, act.code, act.power, "ricci" in want)
    else:
        g, lv, R = torch.ops.fastgeom.shallow_geometry(W.contiguous(), b.contiguous(), x.contiguous(),
                                                       int(act.code), int(act.power), "ricci" in want)
    res = {"metric": g, "logvol": lv, "ricci": R}
    return {k: res[k] for k in want}
