"""Probes a handle runs once, before any real work, so that misuse and untrusted points are reported
instead of silently giving a wrong number.

- ``check_points(x, device=...)``: x is a real floating (B, *input_shape) tensor with finite values,
  on the model's device (and not on the meta device).
- ``model_device(model)``: the device of a model's parameters/buffers (None without any).
- ``cast_overflow(x, dtype)``: points finite in x's dtype but not in the compute dtype (they become NaN).
- ``layer_calls(fmap, x1)``: how many times ``forward`` calls the chosen layer (the first call is used);
  ``warn_layer_calls`` also warns when it is more than one.
- ``batch_coupled(fmap, x)``: whether a point's feature depends on the other points of its batch.
- ``batch_feature_coupled(fmap, xb, feat)``: the same check on every point batch an exact engine runs
  (one point alone against the batch's own features), so coupling that the first points do not show
  (only at larger batches, only at later points) is caught where it happens.
- ``mutates_input(fmap, x1)``: whether the network works in place on its input.
- ``probe(fmap, x)``: all of the three network probes at once, warning where the user must know.

The network probes run under ``torch.no_grad`` and ``features.eval_mode`` (as the computation does)
on copies of the points, never on the caller's tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .features import FeatureMap, _Stop, eval_mode


class LayerCallWarning(UserWarning):
    """The chosen layer is called more than once by ``forward``; the feature is its first call's output."""


class BatchCouplingWarning(UserWarning):
    """A point's feature depends on the other points of its batch (e.g. batch statistics)."""


def _fmt(idx: list[int], limit: int = 10) -> str:
    return ", ".join(map(str, idx[:limit])) + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def model_device(model: torch.nn.Module | None) -> torch.device | None:
    """Device of the model's first parameter (or buffer); None for no model or one without tensors."""
    if model is None:
        return None
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


def check_points(x, device: torch.device | str | None = None) -> None:
    """Check x (B, *input_shape): a real floating-point tensor with a batch dimension, finite, on `device`.

    Args:
        x: the points. device: the model's device (``model_device(model)``), or None to skip that check.
    Raises:
        TypeError: not a tensor, integer/bool/complex dtype. ValueError: no batch dimension, NaN/Inf
        (naming the points), the meta device, or x on another device than the model (naming both).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, *input_shape), got {type(x).__name__}")
    if x.is_complex():
        raise TypeError("x is complex; fastgeom handles real inputs only")
    if not x.is_floating_point():
        raise TypeError(f"x has dtype {x.dtype}; geometry needs floating-point inputs (e.g. x.float() or x.double())")
    if x.layout != torch.strided:
        raise TypeError(f"x has layout {x.layout}; pass a dense tensor (x.to_dense())")
    dev = torch.device(device) if device is not None else None
    if x.is_meta:
        raise ValueError(
            "x is on the meta device (it has a shape but no values)"
            + (f"; the model is on {dev}: create x there" if dev is not None else "; create it on a real device")
        )
    if dev is not None and dev.type == "meta":
        raise ValueError(
            f"the model is on the meta device (its parameters have no values), x is on {x.device}; "
            "load the weights first (e.g. model.to_empty(device=...) then load_state_dict)"
        )
    if dev is not None and not _same_device(x.device, dev):
        raise ValueError(f"x is on {x.device} but the model is on {dev}; move one of them, e.g. x.to('{dev}')")
    if x.dim() < 2:
        raise ValueError(
            f"x must be (B, *input_shape) with a batch dimension, got shape {tuple(x.shape)}; "
            "for a single point use x[None]"
        )
    if x.shape[0] and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"x contains NaN or Inf at point(s) {_fmt(bad)}; remove or replace them")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:<current> are the same device; otherwise type and index must match."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        if a.type != "cuda":
            return True
        cur = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)
    return a.index == b.index


def cast_overflow(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """bool (B,): points finite in x's dtype with some coordinate that is not finite in `dtype`.

    Examples: float64 1e39 into float32 (largest 3.4e38), |x| > 65504 into float16. Such points are
    not computed: their results are NaN. None or x's own dtype gives all False.
    """
    B = x.shape[0]
    if dtype is None or dtype == x.dtype or B == 0:
        return torch.zeros(B, dtype=torch.bool, device=x.device)
    flat = x.detach().reshape(B, -1)
    return torch.isfinite(flat).all(1) & ~torch.isfinite(flat.to(dtype)).all(1)


def layer_calls(fmap: FeatureMap, x1: torch.Tensor) -> int:
    """How many times one forward pass at x1 (1, *input_shape) calls ``fmap``'s layer.

    0 for a layer that is not reached; 1 for the model output or a callable layer (nothing to count).
    If the part of ``forward`` after the layer fails, the calls seen up to then are counted.
    """
    if fmap.module is None:
        return 1
    n = [0]

    def hook(_m, _inp, _out):
        n[0] += 1

    h = fmap.module.register_forward_hook(hook)
    try:
        with torch.no_grad(), eval_mode(fmap.model):
            torch.func.functional_call(fmap.model, fmap.params, (fmap.own_input(x1),))  # type: ignore[arg-type]
    except _Stop:
        pass
    except Exception:  # noqa: BLE001 - only the count matters here; the computation reports real errors
        pass
    finally:
        h.remove()
    return n[0]


def warn_layer_calls(fmap: FeatureMap, x1: torch.Tensor, stacklevel: int = 2) -> int:
    """``layer_calls(fmap, x1)``, warning ``LayerCallWarning`` (naming the layer, the count and the call
    used) when it is more than 1. One line for a handle's probe."""
    calls = layer_calls(fmap, x1)
    if calls > 1:
        name = type(fmap.model).__name__
        warnings.warn(
            f"layer {fmap.layer!r} is called {calls} times by {name}.forward; its feature is the output "
            f"of the first call (the other {calls - 1} are not measured). To measure another call, give that "
            "call its own module (e.g. a copy sharing the weights) and name it as the layer.",
            LayerCallWarning,
            stacklevel=stacklevel + 1,
        )
    return calls


def mutates_input(fmap: FeatureMap, x1: torch.Tensor) -> bool:
    """Whether the network changes its input in place at x1 (1, *input_shape) (torch's version counter).

    ``FeatureMap`` always hands the network a copy, so the caller's x is safe either way; a True
    result matters for engines that run a traced copy of the model on x directly.
    """
    xc = x1.detach().to(fmap.dtype) if fmap.dtype is not None else x1.detach()
    xc = xc.clone()
    v = xc._version
    with torch.no_grad(), eval_mode(fmap.model):
        fmap._raw(xc)  # _raw runs the network on xc itself (no copy), so in-place use shows on its counter
    return xc._version != v


def _tol(dtype: torch.dtype) -> float:
    """Relative difference above which two evaluations of one point differ by more than rounding."""
    eps = torch.finfo(dtype).eps
    return 1e3 * eps if dtype in (torch.float32, torch.float64) else 16 * eps


def batch_coupled(fmap: FeatureMap, x: torch.Tensor, n: int = 3) -> bool:
    """Whether a point's feature depends on the batch around it: features of up to `n` points of x
    computed one at a time against inside one batch (with a second, shifted copy of the point when x
    has only one). True e.g. for ``BatchNorm2d(track_running_stats=False)`` or ``x - x.mean(0)``.

    Differences within rounding (1e3 eps relative for float32/64, 16 eps for half types, of the
    batch's largest feature) are not coupling.
    """
    xs = x[:n].detach()
    if xs.shape[0] == 0:
        return False
    if xs.shape[0] == 1:
        xs = torch.cat([xs, xs * 0.5 + 1.0])
    with torch.no_grad(), eval_mode(fmap.model):
        together = fmap(xs)
        alone = torch.cat([fmap(xs[i : i + 1]) for i in range(xs.shape[0])])
    return features_differ(together, alone, together)


def features_differ(a: torch.Tensor, b: torch.Tensor, batch: torch.Tensor) -> bool:
    """Whether features a and b (same shape) of the same points differ by more than rounding: 1e3 eps
    (16 eps for half types) of ``batch``'s largest feature, or in which entries are finite."""
    scale = batch.abs().max().clamp_min(torch.finfo(batch.dtype).tiny) if batch.numel() else batch.new_ones(())
    diff = (a - b).abs().max() if a.numel() else a.new_zeros(())
    if not bool(torch.isfinite(diff)):
        return bool((torch.isfinite(a) != torch.isfinite(b)).any())
    if not bool(torch.isfinite(scale)):  # a non-finite feature elsewhere in the batch: compare to the finite ones
        fin = batch[torch.isfinite(batch)]
        scale = fin.abs().max().clamp_min(torch.finfo(batch.dtype).tiny) if fin.numel() else batch.new_ones(())
    return bool(diff > _tol(batch.dtype) * scale)


def batch_feature_coupled(fmap: FeatureMap, xb: torch.Tensor, feat: torch.Tensor) -> int | None:
    """For an engine's point batch xb (P > 1, compute dtype) whose pass gave the features ``feat`` (P, d_out):
    the index of a point whose feature computed alone differs from its feature inside the batch, else None.

    One single-point forward (under no_grad; the caller's guards and eval mode hold): the batch's last
    point, which batch-size- or position-dependent coupling (statistics over dim 0 only for large
    batches, a forward that treats later rows differently) reaches when the first points, which
    ``batch_coupled`` probes, do not show it."""
    P = xb.shape[0]
    if P < 2:
        return None
    j = P - 1
    with torch.no_grad():
        alone = fmap(xb[j : j + 1]).reshape(1, -1)
    row = feat[j : j + 1].reshape(1, -1).to(alone.dtype)
    return j if features_differ(row, alone, feat.reshape(P, -1).to(alone.dtype)) else None


def warn_coupled_batch(start: int, stop: int, j: int, stacklevel: int = 2) -> None:
    """``BatchCouplingWarning`` for an engine run that found point ``start + j`` coupled to its batch
    [start, stop) and recomputes from ``start`` point by point."""
    warnings.warn(
        f"the feature of point {start + j} computed alone differs from its feature inside the batch of points "
        f"{start}..{stop - 1} (batch statistics, or other coupling across dim 0 that the first points did not "
        f"show): fastgeom recomputes points {start} onwards one at a time, each alone, and computes this model "
        "point by point from now on.",
        BatchCouplingWarning,
        stacklevel=stacklevel + 1,
    )


@dataclass(frozen=True)
class ProbeReport:
    """What ``probe`` found: layer calls per forward, in-place use of the input, batch coupling."""

    layer_calls: int
    mutates_input: bool
    batch_coupled: bool


def probe(fmap: FeatureMap, x: torch.Tensor) -> ProbeReport:
    """Run ``layer_calls``, ``mutates_input`` and ``batch_coupled`` once on (copies of) x (B >= 1,
    already checked by ``check_points``); warn ``LayerCallWarning`` when the layer is called more than
    once and ``BatchCouplingWarning`` when points are coupled (the caller decides whether to compute
    point by point or refuse)."""
    x1 = x[:1]
    calls = warn_layer_calls(fmap, x1, stacklevel=3)
    coupled = batch_coupled(fmap, x)
    if coupled:
        warnings.warn(
            "the feature of a point depends on the other points of its batch (e.g. BatchNorm with "
            "track_running_stats=False, or statistics over dim 0): results would change with the batch "
            "size, so fastgeom computes such points one at a time, each alone.",
            BatchCouplingWarning,
            stacklevel=2,
        )
    return ProbeReport(calls, mutates_input(fmap, x1), coupled)
