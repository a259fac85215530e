"""Closed-form geometry of a finite-width shallow network (MATH.md section 3).

Feature map Phi(x) = sigma(x W^T + b) / sqrt(n), with W (n, d), b (n,), x (N, d), any d >= 1.
Everything is computed in float64 (inputs are converted; the result has dtype float64 unless
``dtype`` says otherwise).

>>> import torch, fastgeom.shallow as sh
>>> W, b = torch.randn(250, 2, dtype=torch.float64), torch.randn(250, dtype=torch.float64)
>>> x = torch.rand(1600, 2, dtype=torch.float64) * 3 - 1.5
>>> vol = sh.volume_element(W, b, x, "sigmoid")        # (1600,)
>>> R = sh.ricci_scalar(W, b, x, "sigmoid")             # (1600,), true convention (2-sphere: +2)

Curvature convention: textbook (round 2-sphere R = +2, 3-sphere R = 6). ``convention="paper"``
returns 3x the true value, which reproduces the original authors' code and figures (MATH 3.4).

``backend``: "torch" (float64 reference), "triton", "cpp" (fastgeom._C, CPU, multithreaded),
"cuda" (fastgeom._C), or "auto" (fastest usable for the device). An explicitly requested backend
that is not usable raises RuntimeError naming the install command. The fused kernels cover the
built-in activations and d <= 4; other cases run the reference on every backend.
"""

from __future__ import annotations

import torch

from . import activations as _acts
from .ops import shallow as _op
from .ops.shallow import reference as _ref

__all__ = [
    "metric",
    "volume_element",
    "log_volume_element",
    "ricci_scalar",
    "ricci_scalar_2d",
    "ricci_scalar_3units",
    "geometry",
]

CONVENTIONS = {"true": 1.0, "paper": 3.0}


def _check_dtype(dtype) -> None:
    """The result dtype must be a real floating type (an integer type would truncate the geometry)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating dtype (torch.float64, float32, ...), got {dtype!r}")


def _prepare(W, b, x, activation, dtype=torch.float64):
    _check_dtype(dtype)
    act = _acts.get(activation)
    W, b, x = (torch.as_tensor(t) for t in (W, b, x))
    for name, t in (("W", W), ("b", b), ("x", x)):
        if t.is_complex():
            raise TypeError(f"{name} is complex ({t.dtype}); the shallow-network geometry is defined for real inputs")
    if W.dim() != 2:
        raise ValueError(f"W must have shape (n, d) (hidden units x inputs), got {tuple(W.shape)}")
    n, d = W.shape
    if n < 1 or d < 1:
        raise ValueError(f"W must have at least one hidden unit and one input, got shape {tuple(W.shape)}")
    if b.shape != (n,):
        raise ValueError(f"b must have shape (n,) = ({n},) to match W {tuple(W.shape)}, got {tuple(b.shape)}")
    if x.dim() == 1 and d == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (N, d) = (N, {d}) to match W {tuple(W.shape)}, got {tuple(x.shape)}")
    dev = x.device
    if W.device != dev or b.device != dev:
        raise ValueError(f"W, b, x must be on one device, got {W.device}, {b.device}, {dev}; move them with .to()")
    W, b, x = (t.to(torch.float64) for t in (W, b, x))
    for name, t in (("W", W), ("b", b), ("x", x)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf; clean the input (e.g. torch.nan_to_num) first")
    return W, b, x, act


def _conv(convention: str) -> float:
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown convention {convention!r}; use 'true' (2-sphere R = +2) or 'paper' "
            "(3x the true value, as the original code computes)"
        )
    return CONVENTIONS[convention]


def geometry(
    W, b, x, activation, *, backend: str = "auto", convention: str = "true", dtype: torch.dtype = torch.float64
) -> dict:
    """Metric (N, d, d), log volume element (N,) and Ricci scalar (N,) in one call (one fused kernel
    on the compiled/Triton backends): dict with keys 'metric', 'logvol', 'ricci'."""
    c = _conv(convention)
    W, b, x, act = _prepare(W, b, x, activation, dtype)
    out = _op.geometry(W, b, x, act, backend)
    out["ricci"] = out["ricci"] * c
    return {k: v.to(dtype) for k, v in out.items()}


def metric(W, b, x, activation, *, backend: str = "auto", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, d, d) pullback metric g = W^T diag(sigma'(z)^2) W / n (MATH 3.1)."""
    W, b, x, act = _prepare(W, b, x, activation, dtype)
    return _op.geometry(W, b, x, act, backend, want=("metric",))["metric"].to(dtype)


def log_volume_element(
    W, b, x, activation, *, backend: str = "auto", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(N,) natural log of the volume element, sum_i log s_i(diag(sigma'(z)) W / sqrt n); for n < d the
    pseudo-volume (product of the n non-zero singular values, MATH 2.3). Accurate for ill-conditioned W
    (pivoted QR, never log det g)."""
    W, b, x, act = _prepare(W, b, x, activation, dtype)
    return _op.geometry(W, b, x, act, backend, want=("logvol",))["logvol"].to(dtype)


def volume_element(W, b, x, activation, *, backend: str = "auto", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N,) volume element sqrt(det g) (MATH 2.2); exp of :func:`log_volume_element`."""
    _check_dtype(dtype)
    return torch.exp(log_volume_element(W, b, x, activation, backend=backend, dtype=torch.float64)).to(dtype)


def ricci_scalar(
    W, b, x, activation, *, backend: str = "auto", convention: str = "true", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(N,) Ricci scalar by the Gram form (MATH 3.5) or its fused equivalent; NaN where g is singular
    (n < d or degenerate W). ``convention="paper"`` gives 3x the true value (MATH 3.4)."""
    c = _conv(convention)
    W, b, x, act = _prepare(W, b, x, activation, dtype)
    return (_op.geometry(W, b, x, act, backend, want=("ricci",))["ricci"] * c).to(dtype)


def ricci_scalar_2d(
    W, b, x, activation, *, backend: str = "auto", convention: str = "true", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(N,) Ricci scalar for d = 2 by the explicit O(n^3)-per-point form (MATH 3.6).

    A cross-check of :func:`ricci_scalar`; torch only (other backends are validated, then the torch form runs)."""
    c = _conv(convention)
    W, b, x, act = _prepare(W, b, x, activation, dtype)
    if W.shape[1] != 2:
        raise ValueError(f"ricci_scalar_2d needs d = 2 inputs, got W of shape {tuple(W.shape)}; use ricci_scalar")
    _op.pick(backend, act, 2, x.device)
    return (_ref.ricci_2d(W, b, x, act) * c).to(dtype)


def ricci_scalar_3units(
    W, b, x, activation, *, backend: str = "auto", convention: str = "true", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(N,) Ricci scalar for d = 2 inputs and n = 3 hidden units by the explicit form (MATH 3.7)."""
    c = _conv(convention)
    W, b, x, act = _prepare(W, b, x, activation, dtype)
    if W.shape != (3, 2):
        raise ValueError(f"ricci_scalar_3units needs W of shape (3, 2), got {tuple(W.shape)}; use ricci_scalar")
    _op.pick(backend, act, 2, x.device)
    return (_ref.ricci_3units(W, b, x, act) * c).to(dtype)
