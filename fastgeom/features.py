"""Model + layer (+ pooling) -> a pure feature map x (B, *input_shape) -> phi(x) (B, d_out).

``target="sphere"`` returns phi/|phi|, whose Jacobian is J projected onto the tangent space of the
sphere at phi(x) and divided by |phi(x)| (the round-sphere pullback for normalised embeddings).

The feature is the chosen module's output (captured by a forward hook that stops the forward pass
there, so later layers are not run), average-pooled if asked, flattened per point. Parameters and
buffers are passed detached through ``torch.func.functional_call`` (optionally cast to another
dtype), so no gradients reach them and nothing is recorded for them.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

LayerSpec = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]
PoolSpec = Union[None, int, tuple, dict]


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
    raise KeyError(f"unknown layer {layer!r} in {type(model).__name__}.{hint} "
                   f"Layers are names from model.named_modules(), e.g. {some}.")


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
        raise ValueError(f"pool needs a (C, H, W) feature map per point, but the layer output is {tuple(shape)}; "
                         "use pool=None for non-convolutional layers")
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
    raise ValueError(f"pool={N}: no non-overlapping window gives C*oh*ow={N} with ow in {{oh, 2*oh}} "
                     f"for a feature map of shape (C={C}, H={H}, W={W}); pass a kernel tuple instead")


class FeatureMap:
    """phi: x (B, *input_shape) -> (B, d_out), a pure function of x suitable for torch.func."""

    def __init__(self, model: nn.Module | None, layer: LayerSpec = None, pool: PoolSpec = None,
                 dtype: torch.dtype | None = None, target: str = "euclidean"):
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
        self.params = {}
        if model is not None:
            self.params = {k: (v.detach().to(dtype) if (dtype is not None and v.is_floating_point()) else v.detach())
                           for k, v in list(model.named_parameters()) + list(model.named_buffers())}
        if dtype is None and model is not None:
            fp = [p for p in model.parameters() if p.is_floating_point()]
            dtype = fp[0].dtype if fp else None
        self.dtype = dtype
        self._window = "unset"

    def _raw(self, x: torch.Tensor):
        if self.layer is not None and not isinstance(self.layer, str):
            return self.layer(x)
        if self.module is None:
            return torch.func.functional_call(self.model, self.params, (x,))
        box = {}

        def hook(_m, _inp, out):
            box["out"] = out
            raise _Stop

        h = self.module.register_forward_hook(hook)
        try:
            torch.func.functional_call(self.model, self.params, (x,))
        except _Stop:
            pass
        finally:
            h.remove()
        if "out" not in box:
            raise ValueError(f"layer {self.layer!r} was not reached by the forward pass of {type(self.model).__name__}; "
                             "choose a layer that forward() calls (see model.named_modules())")
        return box["out"]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and x.dtype != self.dtype:
            x = x.to(self.dtype)
        out = self._raw(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the feature at layer {self.layer!r} is a {type(out).__name__}, not a Tensor; "
                            "choose a layer whose output is a single tensor, or pass a callable feature map")
        return self.post(out)

    def null_dims(self, d_in: int, d_out: int) -> int:
        """Singular values of J that are zero by construction: 1 for ``target="sphere"`` when
        d_out <= d_in (phi/|phi| has no radial derivative, so rank <= d_out - 1), else 0. The null
        direction itself is the feature phi/|phi| (in feature space)."""
        return int(self.target == "sphere" and d_out <= d_in)

    def post(self, out: torch.Tensor) -> torch.Tensor:
        """The layer's output (B, *feature_shape) -> features (B, d_out): pool, flatten, sphere projection."""
        if self.pool is not None:
            if self._window == "unset":
                self._window = pool_window(tuple(out.shape[1:]), self.pool)
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
