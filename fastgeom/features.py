"""Model + layer (+ pooling) -> a pure feature map x (B, *input_shape) -> phi(x) (B, d_out).

``target="sphere"`` returns phi/|phi|, whose Jacobian is J projected onto the tangent space of the
sphere at phi(x) and divided by |phi(x)| (the round-sphere pullback for normalised embeddings).

The feature is the chosen module's output (captured by a forward hook that stops the forward pass
there, so later layers are not run), average-pooled if asked, flattened per point. Parameters and
buffers are passed detached through ``torch.func.functional_call`` (optionally cast to another
dtype), so no gradients reach them and nothing is recorded for them. A callable layer runs inside
the same reparametrisation of the model (or of the callable itself when it is an ``nn.Module``), so
it sees the same detached, cast parameters. The network always receives a copy of the points, so a
model that works in place on its input never changes the caller's ``x`` (one copy of the input per
pass, under 1% of a small CNN's forward pass: see ``FeatureMap.__call__``). If ``forward`` calls the
chosen layer more than once, the first call's output is the feature (``fastgeom.checks.layer_calls``
counts the calls).
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

LayerSpec = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]  # noqa: UP007  (a runtime alias: Python 3.10)
PoolSpec = Union[None, int, tuple, dict]  # noqa: UP007


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the chosen layer."""


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named `layer` (nested names like ``layer4.2.conv2``); KeyError with close matches."""
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    some = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    raise KeyError(
        f"unknown layer {layer!r} in {type(model).__name__}.{hint} "
        f"Layers are names from model.named_modules(), e.g. {some}."
    )


def pool_window(shape: tuple, pool: PoolSpec) -> tuple[int, int] | None:
    """Average-pool kernel for a (C, H, W) feature map.

    ``pool=N`` (int): target size; non-overlapping windows with output (oh, ow), C*oh*ow = N and
    ow in {oh, 2*oh} (CIFAR ResNet-34, N=512: layer1 (16,8), layer2 8, layer3 (8,4), layer4 4).
    ``pool=(kh, kw)`` or ``pool={"kernel": k}``: that kernel (stride = kernel).
    ``pool={"size": N}``: same as ``pool=N``.
    """
    if pool is None:
        return None
    if len(shape) != 3:
        raise ValueError(
            f"pool needs a (C, H, W) feature map per point, but the layer output is {tuple(shape)}; "
            "use pool=None for non-convolutional layers"
        )
    C, H, W = shape
    if isinstance(pool, dict):
        if set(pool) == {"kernel"}:
            k = pool["kernel"]
            pool = (k, k) if isinstance(k, int) else tuple(k)
        elif set(pool) == {"size"}:
            pool = int(pool["size"])
        else:
            raise ValueError(f"pool dict must be {{'kernel': k}} or {{'size': N}}, got {pool}")
    if isinstance(pool, tuple):
        if len(pool) != 2 or not all(isinstance(v, int) and v > 0 for v in pool):
            raise ValueError(f"pool kernel must be a pair of positive ints, got {pool}")
        kh, kw = pool
        if H % kh or W % kw:
            raise ValueError(f"pool kernel {pool} does not tile the {H}x{W} feature map")
        return kh, kw
    if isinstance(pool, bool) or not isinstance(pool, int) or pool <= 0:
        raise TypeError(f"pool must be None, a target size (int), a kernel tuple or a dict, got {pool!r}")
    N = pool
    if N % C:
        raise ValueError(f"pool={N} is not a multiple of the {C} channels of the (C={C}, H={H}, W={W}) feature map")
    cells = N // C
    for oh in range(1, int(math.isqrt(cells)) + 1):
        for ow in (oh, 2 * oh):
            if oh * ow == cells and H % oh == 0 and W % ow == 0:
                return H // oh, W // ow
    raise ValueError(
        f"pool={N}: no non-overlapping window gives C*oh*ow={N} with ow in {{oh, 2*oh}} "
        f"for a feature map of shape (C={C}, H={H}, W={W}); pass a kernel tuple instead"
    )


class _Bound(nn.Module):
    """``fn(x)`` as the forward of a module that owns ``owner``, so that ``functional_call`` on it swaps
    the owner's parameters and buffers for the feature map's detached (cast) copies while ``fn`` runs."""

    def __init__(self, owner: nn.Module, fn: Callable):
        super().__init__()
        self.owner = owner
        object.__setattr__(self, "fn", fn)  # not registered: fn may be the owner itself

    def forward(self, x):
        return self.fn(x)


class FeatureMap:
    """phi: x (B, *input_shape) -> (B, d_out), a pure function of x suitable for torch.func."""

    def __init__(
        self,
        model: nn.Module | None,
        layer: LayerSpec = None,
        pool: PoolSpec = None,
        dtype: torch.dtype | None = None,
        target: str = "euclidean",
    ):
        if target not in ("euclidean", "sphere"):
            raise ValueError(f"target must be 'euclidean' or 'sphere', got {target!r}")
        self.target = target
        self.model = model
        self.layer = layer
        self.pool = pool
        self.module = None
        if isinstance(layer, str):
            if model is None:
                raise TypeError("layer is a name, so a model is needed")
            self.module = resolve_layer(model, layer)
        elif layer is not None and not callable(layer):
            raise TypeError(f"layer must be None, a module name (str) or a callable, got {type(layer).__name__}")
        # the module whose parameters the feature uses: the model, or a callable layer that is a module
        owner = model if model is not None else (layer if isinstance(layer, nn.Module) else None)
        self.params = {}
        if owner is not None:
            self.params = {
                k: (v.detach().to(dtype) if (dtype is not None and v.is_floating_point()) else v.detach())
                for k, v in list(owner.named_parameters()) + list(owner.named_buffers())
            }
        self._bound = None
        if layer is not None and not isinstance(layer, str) and owner is not None:
            self._bound = _Bound(owner, layer)
            self._bound_params = {"owner." + k: v for k, v in self.params.items()}
        if dtype is None and owner is not None:
            fp = [p for p in owner.parameters() if p.is_floating_point()]
            dtype = fp[0].dtype if fp else None
        self.dtype = dtype
        self._window: tuple[int, int] | None = None
        self._window_known = False

    def _raw(self, x: torch.Tensor):
        if self.layer is not None and not isinstance(self.layer, str):
            if self._bound is None:  # a plain function without a model: nothing to swap
                return self.layer(x)
            return torch.func.functional_call(self._bound, self._bound_params, (x,))
        if self.module is None:
            assert self.model is not None
            return torch.func.functional_call(self.model, self.params, (x,))
        box = {}

        def hook(_m, _inp, out):
            box["out"] = out
            raise _Stop

        assert self.model is not None  # a layer name needs a model (checked at construction)
        h = self.module.register_forward_hook(hook)
        try:
            torch.func.functional_call(self.model, self.params, (x,))
        except _Stop:
            pass
        finally:
            h.remove()
        if "out" not in box:
            raise ValueError(
                f"layer {self.layer!r} was not reached by the forward pass of {type(self.model).__name__}; "
                "choose a layer that forward() calls (see model.named_modules())"
            )
        return box["out"]

    def own_input(self, x: torch.Tensor) -> torch.Tensor:
        """x in the compute dtype, always a new tensor (the cast copies; else a clone), so that a model
        working in place on its input acts on fastgeom's copy, never on the caller's x. Every engine that
        runs the network on x itself (not through ``__call__``) must pass it through this first."""
        return x.to(self.dtype) if self.dtype is not None and x.dtype != self.dtype else x.clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, *input_shape) -> features (B, d_out); x itself is never modified."""
        x = self.own_input(x)
        out = self._raw(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the feature at layer {self.layer!r} is a {type(out).__name__}, not a Tensor; "
                "choose a layer whose output is a single tensor, or pass a callable feature map"
            )
        if out.dim() == 0 or out.shape[0] != x.shape[0]:
            what = (
                "a 0-d tensor (one number for the whole batch)"
                if out.dim() == 0
                else f"a tensor of shape {tuple(out.shape)} for {x.shape[0]} point(s)"
            )
            raise TypeError(
                f"the feature at layer {self.layer!r} is {what}; the feature map must return "
                "(B, *feature_shape), one row per point of x (B, *input_shape)"
            )
        return self.post(out)

    def null_dims(self, d_in: int, d_out: int) -> int:
        """Singular values of J that are zero by construction: 1 for ``target="sphere"`` when
        d_out <= d_in (phi/|phi| has no radial derivative, so rank <= d_out - 1), else 0. The null
        direction itself is the feature phi/|phi| (in feature space)."""
        return int(self.target == "sphere" and d_out <= d_in)

    def post(self, out: torch.Tensor) -> torch.Tensor:
        """The layer's output (B, *feature_shape) -> features (B, d_out): pool, flatten, sphere projection."""
        if self.pool is not None:
            if not self._window_known:
                self._window, self._window_known = pool_window(tuple(out.shape[1:]), self.pool), True
            assert self._window is not None
            out = F.avg_pool2d(out, kernel_size=self._window, stride=self._window)
        out = out.reshape(out.shape[0], -1)
        if self.target == "sphere":
            # pullback of the round sphere: d(phi/|phi|) = (I - u u^T) dphi / |phi|, u = phi/|phi|
            out = out / torch.linalg.vector_norm(out, dim=1, keepdim=True)
        return out


@contextlib.contextmanager
def eval_mode(model: nn.Module | None):
    """Put every submodule in eval mode; restore each module's own training flag afterwards."""
    if model is None:
        yield
        return
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, f in flags.items():
            m.training = f


@contextlib.contextmanager
def no_tf32():
    """TF32 off (it destroys small singular values) for cuBLAS matmuls and cuDNN conv/rnn; restored after.

    With torch's ``fp32_precision`` API (torch >= 2.9) the per-op settings are saved, set to "ieee" and
    restored: torch refuses legacy ``allow_tf32`` reads once a user has configured that API (RuntimeError
    about mixing the APIs), and legacy writes do not override it. Older torch: the legacy flags and
    float32 matmul precision "highest".
    """
    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(mm, "fp32_precision") and hasattr(cudnn, "conv"):
        ops = (mm, cudnn.conv, cudnn.rnn)
        old = [op.fp32_precision for op in ops]
        try:
            for op in ops:
                op.fp32_precision = "ieee"
            yield
        finally:
            for op, v in zip(ops, old):
                op.fp32_precision = v
        return
    old = (mm.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    mm.allow_tf32 = False
    cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        mm.allow_tf32, cudnn.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])
