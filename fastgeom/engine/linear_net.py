"""The feature map as a linear network at a point batch, with hand-written tangent and cotangent passes.

``LinearGraph(fmap)`` traces the model once (``torch.fx``, through torchvision's
``create_feature_extractor`` when a layer is named), rewrites in-place ops as out-of-place ones
(``ReLU(inplace=True)``, ``x += y``, ``F.relu(x, inplace=True)``, ``t.relu_()``; later readers of the
mutated tensor read the new node, which is what the in-place op computed), folds eval-mode BatchNorm into
the preceding convolutions (``torch.fx.experimental.optimization.fuse``) and casts a private copy to the
compute dtype. ``graph.linearize(x)`` runs one forward pass at a point batch x (P, *input_shape) and keeps
only what the linear map needs:

- convolution (grouped and depthwise too) / linear: nothing (the weights; the bias drops out of a linear map);
- BatchNorm left unfolded (eval mode): its per-channel scale;
- elementwise activations (ReLU, GELU incl. tanh-approximate, SiLU, hardswish, tanh, ...): the derivative
  d = act'(pre-activation), one tensor per point batch;
- products ``a * b`` (SE / gating, layer scale): the other factor of each carried one;
- LayerNorm: the normalised input and 1/sigma;
- residual ``add`` / ``sub`` (cotangents summed back over broadcast dims), reshapes (``view``,
  ``flatten``, ``squeeze``, ...) and axis permutations (channel shuffles, patch flattening), average
  pooling: nothing (pooling is applied to, and transposed on, the whole (K*P)-batch of directions at once);
- any other node that depends on x (concatenation, indexing, max-pool, attention, tuple-returning modules
such as ``nn.MultiheadAttention`` / ``nn.LSTM`` /
  ``nn.GRU`` and ``getitem`` on their results, the feature map's pool and ``target="sphere"``
  normalisation, unknown functions): its inputs, and ``torch.func.vjp`` / ``jvp`` at that node (a
  node without a forward-mode formula gets its JVP as the transpose of its VJP). A node whose value is
  not a tensor but holds tensors computed from x (a tuple) is kept as a function of its inputs and
  composed into each consumer, so no tangent is ever dropped.

Correct by construction: a node is a constant of x only when none of its inputs depends on x (or its
value holds no floating-point tensor: sizes, masks, indices); an in-place op that cannot be rewritten
(``setitem``, ``copy_``, ``fill_``) on a tensor that depends on x raises ``LinearizeError``.

``Linearization.vjp(C (K, P, d_out)) -> (K, P, *input_shape)`` (rows of J for K cotangents at every
point at once) walks the graph backwards: conv -> ``conv_transpose`` (``torch.nn.grad.convNd_input``),
linear -> ``C @ W``, activation -> ``dact_add``, where a node with two consumers (the block input
feeding both the residual branch and the skip) gets ``dact_add(d, c_branch, c_skip)`` = d * (c_branch
+ c_skip) in one fused op. ``jvp(T (K, P, *input_shape)) -> (K, P, d_out)`` walks forwards, with
``act(h + skip)`` fused the same way. Tangents of K directions at P points are one (K*P)-batch of
convolutions. Memory per point batch: one stored tensor per activation (no pre-activations, no
conv inputs), against autograd's saved inputs of every op. Both run under ``guards.ad_guards`` (math
attention kernel, no MHA fast path) and map the generic nodes with ``batching.vmap``.

On CPU the copy and the directions are kept channels-last (NHWC): oneDNN's transposed
convolutions are 10-30% faster in that layout; a model whose code needs NCHW-contiguous tensors
(``x.view(B, -1)``) is switched back to NCHW on the first failure.

``validated_linearize(fmap, x, d_out)`` (what the API calls) checks the traced pass at the first point
before any work is done with it: feature, three random VJPs and (by the adjoint identity) three random
JVPs against torch.func on the model, in the compute dtype and again on a float64 copy against the
float64 feature map, to 1e-9 relative there, so that a part of the model the trace misses is caught
down to a contribution of 1e-8 of J.

Models that ``torch.fx`` cannot trace (data-dependent control flow), or that fail the check, raise
``LinearizeError`` with the reason; ``method="auto"`` then uses the autograd engine. The reference is
``torch.func.vjp`` / ``jvp`` of the feature map itself (tests/test_linear_net.py,
tests/test_model_families.py).
"""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import jvp as _jvp
from torch.func import vjp as _vjp
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..ops.linearized import dact_add
from .batching import vmap
from .guards import ad_guards
from .planner import is_oom


class LinearizeError(RuntimeError):
    """The model (or one of its nodes) cannot be traced, linearised or validated; the message says why.
    ``method="auto"`` then uses the autograd engine (``method="streamed"``)."""


_ACT_MODULES = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.LeakyReLU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
    nn.CELU,
    nn.SELU,
    nn.Tanhshrink,
    nn.Softsign,
    nn.Hardswish,
    nn.Hardsigmoid,
)
_ACT_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.gelu,
    F.silu,
    torch.tanh,
    torch.sigmoid,
    F.elu,
    F.leaky_relu,
    F.softplus,
    F.mish,
    torch.nn.functional.relu6,
    F.hardtanh,
    F.selu,
    F.celu,
    F.tanh,
    F.sigmoid,
    F.hardswish,
    F.hardsigmoid,
    F.softsign,
}
_ACT_METHODS = {"relu", "tanh", "sigmoid"}
_CONV = {
    nn.Conv1d: torch.nn.grad.conv1d_input,  # type: ignore[attr-defined]
    nn.Conv2d: torch.nn.grad.conv2d_input,  # type: ignore[attr-defined]
    nn.Conv3d: torch.nn.grad.conv3d_input,  # type: ignore[attr-defined]
}
_CONV_FWD = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# per-sample linear maps that act on any batch size: applied to the (K*P)-batch of tangents directly,
# transposed by torch.func.vjp at zeros (their transpose does not depend on the primal)
_POOL_MODULES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)
_POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
}
_ADD = {operator.add, torch.add}
_SUB = {operator.sub, torch.sub}
_MUL = {operator.mul, torch.mul}
# in-place Python operators and their out-of-place forms
_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.imod: operator.mod,
}
# pure reshapes (row-major order kept) and axis permutations: no primal data, transposed by reshape / inverse perm
_RESHAPE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "view_as",
    "reshape_as",
}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten}
_PERMUTE = {"permute", "transpose", "swapaxes", torch.permute, torch.transpose, torch.swapaxes}
_INPLACE_META = "fastgeom_inplace"  # node.meta key: an in-place op with no out-of-place rewrite


@dataclass
class _Step:
    """One tangent-carrying node: rule in {"conv", "linear", "scale", "act", "mul", "layernorm", "add", "sub",
    "identity", "reshape", "permute", "batchlinear", "func"}."""

    name: str
    rule: str
    inputs: list  # names of the tangent-carrying input nodes (in argument order)
    data: Any = None  # module (conv/linear), scale, derivative, factors, or (vjp_fn, jvp_fn) for "func"
    shape: tuple = ()  # per-point output shape


def _permutation(target, args, kwargs) -> list | None:
    """The full axis permutation of permute / transpose / swapaxes (out = in.permute(perm)), or None."""
    n = args[0].dim()
    if target in ("permute", torch.permute):
        dims = kwargs.get("dims", args[1:])
        if len(dims) == 1 and isinstance(dims[0], (tuple, list, torch.Size)):
            dims = dims[0]
        perm = list(dims)
    else:
        pair = list(args[1:3]) + [kwargs[k] for k in ("dim0", "dim1", "axis0", "axis1") if k in kwargs]
        if len(pair) != 2:
            return None
        perm = list(range(n))
        a, b = (d % n if isinstance(d, int) else d for d in pair)
        if not (isinstance(a, int) and isinstance(b, int)):
            return None
        perm[a], perm[b] = perm[b], perm[a]
    if not all(isinstance(d, int) for d in perm) or len(perm) != n:
        return None
    perm = [d % n for d in perm]
    return perm if sorted(perm) == list(range(n)) else None


def _describe(node: fx.Node) -> str:
    t = node.target
    what = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
    return f"node {node.name!r} ({node.op} {what})"


def _out_of_place_function(target) -> Callable | None:
    """torch.relu_ -> torch.relu (a torch / F function whose name ends in '_' and has an out-of-place twin)."""
    name = getattr(target, "__name__", "")
    if not name.endswith("_") or name.startswith("_"):
        return None
    for ns in (torch, F):
        if getattr(ns, name, None) is target and callable(getattr(ns, name[:-1], None)):
            return getattr(ns, name[:-1])
    return None


def _drop_inplace_flag(node: fx.Node) -> bool:
    """F.relu(x, inplace=True) (keyword or positional) -> inplace=False; True if the node was in place."""
    if node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
        return True
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # builtins without a signature, or args that do not bind
        return False
    if bound.arguments.get("inplace") is not True:
        return False
    bound.arguments["inplace"] = False
    node.args, node.kwargs = tuple(bound.args), dict(bound.kwargs)
    return True


def _out_of_place(gm: fx.GraphModule) -> None:
    """Rewrite in-place ops of ``gm`` as out-of-place ones, in place.

    Every later reader of the mutated tensor (the op's first argument) is redirected to the op's
    result, which is the value an in-place op leaves there. Ops with no out-of-place form (setitem,
    ``copy_``, ``fill_``, ...) are marked, and refused at linearisation time when x flows into them.
    A mutated tensor that aliases another one (a view) would make the rewrite differ from the model;
    the first-point validation catches that."""
    modules = dict(gm.named_modules())
    inplace_mods = {name for name, m in modules.items() if getattr(m, "inplace", None) is True}
    for name in inplace_mods:
        modules[name].inplace = False
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        mutated = False
        if n.op == "call_module":
            mutated = n.target in inplace_mods
        elif n.op == "call_function":
            if n.target in _INPLACE_OPERATORS:
                n.target, mutated = _INPLACE_OPERATORS[n.target], True
            elif n.target is operator.setitem:
                n.meta[_INPLACE_META] = "setitem"
            elif (twin := _out_of_place_function(n.target)) is not None:
                n.target, mutated = twin, True
            else:
                mutated = _drop_inplace_flag(n)
        elif n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("_"):
            if callable(getattr(torch.Tensor, n.target[:-1], None)):
                n.target, mutated = n.target[:-1], True
            else:
                n.meta[_INPLACE_META] = n.target
        if mutated and n.args and isinstance(n.args[0], fx.Node):
            a = n.args[0]
            for u in list(a.users):
                if u is not n and order[u] > order[n]:
                    u.replace_input_with(a, n)
    gm.graph.lint()
    gm.recompile()


def _trace(fmap) -> fx.GraphModule:
    model, layer = fmap.model, fmap.layer
    if model is None or (layer is not None and not isinstance(layer, str)):
        raise LinearizeError(
            "method='linearized' needs an nn.Module and a layer name (or None); a callable feature "
            "map cannot be traced: use method='streamed'"
        )
    src = copy.deepcopy(model).eval()
    if fmap.dtype is not None:  # before folding: fold in the compute dtype, not in the model's
        src = src.to(fmap.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fx's notes on attribute nodes it does not own
        try:
            if layer is None:
                gm = fx.symbolic_trace(src)
            else:
                from torchvision.models.feature_extraction import create_feature_extractor

                gm = create_feature_extractor(src, return_nodes={layer: "feature"})
        except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable code
            raise LinearizeError(
                f"torch.fx could not trace {type(model).__name__}"
                f"{'' if layer is None else f' up to layer {layer!r}'} ({type(e).__name__}: {e}); "
                "use method='streamed'"
            ) from e
        gm.eval()
        _out_of_place(gm)
        try:
            from torch.fx.experimental.optimization import fuse

            gm = fuse(gm, inplace=True, no_trace=True)  # type: ignore[assignment]
        except Exception:  # noqa: BLE001 - folding is an optimisation; unfolded BN is handled as a scale
            pass
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm


def _elementwise_derivative(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """act'(x) for an elementwise fn: one reverse-mode product with a cotangent of ones."""
    with torch.enable_grad():
        y, pull = _vjp(fn, x)  # type: ignore[misc]
        return pull(torch.ones_like(y))[0]


def _run(node: fx.Node, fn: Callable, args, kwargs):
    """fn(*args, **kwargs) for one node of the traced graph; an error there (other than out-of-memory) means the
    traced graph does not run as the model does at these points: LinearizeError naming the node."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the model's own op, replayed by the trace
        if is_oom(e) or isinstance(e, LinearizeError):
            raise
        raise LinearizeError(
            f"the traced graph fails at {_describe(node)} ({type(e).__name__}: {e}); use method='streamed'"
        ) from e


def _is_relu(node: fx.Node, fn, args, kwargs) -> bool:
    """A plain ReLU (module, function or method), whose derivative needs no autograd call."""
    if len(args) != 1 or any(v is not False for v in kwargs.values()):
        return False
    if node.op == "call_module":
        return type(fn) is nn.ReLU
    return node.target in (F.relu, torch.relu, "relu")


def _relu_derivative(x: torch.Tensor) -> torch.Tensor:
    """relu'(x) = 1 where x > 0, else 0 (torch's threshold_backward: 0 at x = 0 too)."""
    return (x > 0).to(x.dtype)


def _is_float_tensor(v) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _layer_norm_data(x: torch.Tensor, ndim: int, weight, eps: float):
    """(x_hat, 1/sigma, weight) of a LayerNorm over the last ``ndim`` dims of x."""
    dims = tuple(range(-ndim, 0))
    mean = x.mean(dims, keepdim=True)
    rstd = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    return (x - mean) * rstd, rstd, weight, dims


def _layer_norm_tangent(data, t: torch.Tensor) -> torch.Tensor:
    """d LN(x)[t] = w * (t - mean(t) - x_hat * mean(t * x_hat)) / sigma (self-adjoint before the weight)."""
    xhat, rstd, w, dims = data
    return _layer_norm_core(xhat, rstd, dims, t) * w if w is not None else _layer_norm_core(xhat, rstd, dims, t)


def _layer_norm_core(xhat, rstd, dims, t):
    return rstd * (t - t.mean(dims, keepdim=True) - xhat * (t * xhat).mean(dims, keepdim=True))


class LinearGraph:
    """A traced, BatchNorm-folded copy of ``fmap``'s model up to its layer (see module docstring)."""

    def __init__(self, fmap, channels_last: bool | None = None):
        self.fmap = fmap
        self.gm = _trace(fmap)
        has_conv2d = any(type(m) is nn.Conv2d for m in self.gm.modules())
        dev = next((p.device for p in self.gm.parameters()), torch.device("cpu"))
        # NHWC: oneDNN's transposed convolutions are 10-30% faster on CPU (bench/logvol.py (historical
        # section logvol_cpu)). On CUDA the
        # fused kernels take contiguous NCHW tensors, so the default there is NCHW.
        self.channels_last = (has_conv2d and dev.type == "cpu") if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.gm = self.gm.to(memory_format=torch.channels_last)
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        ph = [n for n in self.nodes if n.op == "placeholder"]
        if len(ph) != 1:
            raise LinearizeError(f"the traced model takes {len(ph)} inputs; method='linearized' needs exactly one")
        self.input = ph[0].name

    # ------------------------------------------------------------------------------------------
    def _classify(self, node: fx.Node, args, kwargs, carried: list[int]):
        """(rule, data) for a node whose tensor arguments at positions `carried` carry the tangent."""
        if carried == [0] and node.op in ("call_method", "call_function"):
            if node.target in _RESHAPE_METHODS | _RESHAPE_FUNCTIONS:
                return "reshape", None  # (input shape, output shape) filled in once the value is known
            if node.target in _PERMUTE:
                perm = _permutation(node.target, args, kwargs)
                if perm is not None:
                    return "permute", perm
        if node.op == "call_module":
            mod = self.modules[node.target]
            if type(mod) in _CONV and mod.padding_mode == "zeros" and len(args) == 1 and not kwargs:
                return "conv", mod
            if type(mod) is nn.Linear and len(args) == 1 and not kwargs:
                return "linear", mod
            if isinstance(mod, _BN) and not mod.training and mod.running_var is not None and len(args) == 1:
                scale = torch.rsqrt(mod.running_var + mod.eps)
                if mod.weight is not None:
                    scale = scale * mod.weight
                return "scale", scale
            if isinstance(mod, _ACT_MODULES) and len(args) == 1 and not kwargs:
                return "act", mod
            if isinstance(mod, nn.LayerNorm) and len(args) == 1 and not kwargs:
                return "layernorm", _layer_norm_data(args[0], len(mod.normalized_shape), mod.weight, mod.eps)
            if isinstance(mod, (nn.Identity, nn.Dropout)) and len(args) == 1:
                return "identity", None
            if isinstance(mod, _POOL_MODULES) and len(args) == 1 and not kwargs:
                return "batchlinear", mod
            if isinstance(mod, (nn.Flatten, nn.Unflatten)) and len(args) == 1:
                return "reshape", None
        elif node.op == "call_function":
            extra = list(args[1:]) + list(kwargs.values())
            if (
                node.target in _POOL_FUNCTIONS
                and carried == [0]
                and not any(isinstance(a, torch.Tensor) for a in extra)
            ):
                return "batchlinear", (lambda t, _f=node.target, _a=args, _k=kwargs: _f(t, *_a[1:], **_k))
            if node.target in _ACT_FUNCTIONS and carried == [0] and not any(isinstance(a, torch.Tensor) for a in extra):
                return "act", None
            if node.target is F.layer_norm and carried == [0]:
                ln = inspect.signature(F.layer_norm).bind(*args, **kwargs).arguments
                if ln.get("bias") is None or isinstance(ln.get("bias"), torch.Tensor):
                    return "layernorm", _layer_norm_data(
                        args[0], len(ln["normalized_shape"]), ln.get("weight"), ln.get("eps", 1e-5)
                    )
            if node.target in _ADD | _SUB and len(args) == 2 and not kwargs:
                rule = "add" if node.target in _ADD else "sub"
                # broadcasting (e.g. (P, 6) - (P, 1)): the full shapes, so that cotangents are summed back
                out = torch.broadcast_shapes(*[tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])
                in_shapes = [tuple(args[i].shape) for i in carried]
                bcast = None if all(sh == tuple(out) for sh in in_shapes) else (in_shapes, tuple(out))
                if len(carried) == 2:
                    return rule, bcast
                if carried == [0] or (carried == [1] and rule == "add"):
                    return "identity", bcast
            if (
                node.target in _MUL
                and len(args) == 2
                and not kwargs
                and all(isinstance(a, (torch.Tensor, int, float)) and not isinstance(a, bool) for a in args)
            ):
                shapes = {i: tuple(args[i].shape) for i in carried}
                return "mul", (tuple(args), carried, shapes)
        elif node.op == "call_method":
            if node.target in _ACT_METHODS and len(args) == 1 and not kwargs:
                return "act", None
        return "func", None

    def linearize(self, x: torch.Tensor) -> Linearization:
        """One forward pass at x (P, *input_shape): the linear map's stored data and phi(x) (P, d_out)."""
        x = self.fmap.own_input(x)  # a copy: in-place ops of the model never reach the caller's x
        with ad_guards():
            if not self.channels_last:
                return self._linearize(x)
            try:
                return self._linearize(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
            except RuntimeError as e:
                if "view" not in str(e) and "stride" not in str(e):
                    raise
                # model code that needs NCHW-contiguous tensors (e.g. x.view(B, -1)): use NCHW from now on
                self.channels_last = False
                self.gm = self.gm.to(memory_format=torch.contiguous_format)
                self.modules = dict(self.gm.named_modules())
                return self._linearize(x.contiguous())

    def _linearize(self, x: torch.Tensor) -> Linearization:
        env: dict[str, Any] = {}
        carries: set[str] = set()  # nodes whose value depends on x (tensors, and composites below)
        composites: dict[str, tuple] = {}  # name -> (g, leaf names, leaf primals): a non-tensor value built from x
        steps: list[_Step] = []
        users = {n.name: len(n.users) for n in self.nodes}
        out_node = None
        with torch.no_grad():
            why = "the linearised engine can differentiate: use method='streamed'"
            for node, fn, args, kwargs, carried, rule, data in self.walk(x, env, carries, composites, why):
                if node.op == "output":
                    out_node = node
                    break
                in_names = [node.args[i].name for i in carried]
                if rule == "act":
                    act = lambda t, _f=fn, _a=args, _k=kwargs: _f(t, *_a[1:], **_k)
                    data = (
                        _relu_derivative(args[0])
                        if _is_relu(node, fn, args, kwargs)
                        else _elementwise_derivative(act, args[0])
                    )
                    val = _run(node, fn, args, kwargs)
                elif rule == "func":
                    kind, val, data, in_names = self._func_node(node, fn, carries, composites, env)
                    if kind == "composite":
                        composites[node.name] = data
                        carries.add(node.name)
                else:
                    val = _run(node, fn, args, kwargs)
                    if rule == "reshape":
                        data = (tuple(args[0].shape), tuple(val.shape))
                env[node.name] = val
                if _is_float_tensor(val):
                    carries.add(node.name)
                    steps.append(_Step(node.name, rule, in_names, data, tuple(val.shape[1:])))
                # else: sizes, masks, integer tensors (no tangent flows through them), or a composite
                for a in node.all_input_nodes:  # free primal values no later node needs (conv inputs, pre-activations)
                    users[a.name] -= 1
                    if users[a.name] == 0 and a.name != self.input:
                        env.pop(a.name, None)
        res = feature_node(out_node, lambda n: n in carries and n not in composites, "; use method='streamed'")
        y = env[res.name]
        with torch.enable_grad():
            feat, post_vjp = _vjp(self.fmap.post, y)  # type: ignore[misc]
        post_jvp = lambda t, _y=y: _jvp(self.fmap.post, (_y,), (t,))[1]
        return Linearization(
            self.input, tuple(x.shape[1:]), steps, res.name, feat.detach(), post_vjp, post_jvp, self.channels_last
        )

    def walk(self, x: torch.Tensor, env: dict, carries: set, composites: dict, what_can: str):
        """The traced nodes in order, on input x: placeholders, attributes and nodes that do not depend on x
        are evaluated into env here; every other node is yielded as (node, fn, args, kwargs, carried, rule,
        data) for the caller to evaluate (carried: indices of its args that depend on x; rule, data: its
        first-order rule from ``_classify``, or "func"), and finally the output node (with Nones). An in-place
        write into or from an x-dependent tensor is a LinearizeError ("... no out-of-place form" + what_can)."""
        for node in self.nodes:
            if node.op == "placeholder":
                env[node.name] = x
                carries.add(node.name)
                continue
            if node.op == "output":
                yield node, None, None, None, None, None, None
                return
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            if node.op == "get_attr":
                obj = self.gm
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                env[node.name] = obj
                continue
            fn = self._callable(node)
            ins = [a for a in node.all_input_nodes if a.name in carries]
            if not ins:
                env[node.name] = _run(node, fn, args, kwargs)  # constant w.r.t. x: no input depends on it
                continue
            if _INPLACE_META in node.meta:
                raise LinearizeError(
                    f"{_describe(node)} writes in place ({node.meta[_INPLACE_META]}) into or from a tensor "
                    f"that depends on the input; it has no out-of-place form {what_can}"
                )
            carried = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a.name in carries]
            top = {node.args[i].name for i in carried}
            rule, data = "func", None
            if top == {a.name for a in ins} and not any(a.name in composites for a in ins):
                rule, data = self._classify(node, args, kwargs, carried)
            yield node, fn, args, kwargs, carried, rule, data

    def _callable(self, node: fx.Node) -> Callable:
        if node.op == "call_module":
            return self.modules[node.target]
        if node.op == "call_function":
            return node.target  # type: ignore[return-value]
        if node.op == "call_method":
            return lambda obj, *a, _m=node.target, **k: getattr(obj, _m)(*a, **k)
        raise LinearizeError(f"unsupported fx node {node.op!r}")

    def _func_node(self, node, fn, carries, composites, env):
        """A node without a rule, by torch.func at its primal inputs: (kind, value, data, leaf names).

        The arguments are flattened with pytree (lists for torch.cat, kwargs), so a node may take the
        input anywhere in its arguments, and more than once. An argument that is a composite (a tuple
        computed from x) is recomputed from its own tensor inputs inside the node's function, so the
        node is differentiated through it. kind: "tensor" (data = (vjp_fn, jvp_fn)), "composite"
        (data = (function of the leaves, leaf names, leaf primals)) or "constant" (no floating-point
        tensor in the value)."""
        f, names, primals = self.leaf_function(node, fn, carries, composites, env)
        val = _run(node, f, primals, {})
        if not isinstance(val, torch.Tensor):
            if any(_is_float_tensor(t) for t in tree_flatten(val)[0]):
                return "composite", val, (f, names, primals), names
            return "constant", val, None, names
        if not val.is_floating_point():
            return "constant", val, None, names
        try:
            with torch.enable_grad():
                val, vjp_fn = _vjp(f, *primals)
        except (RuntimeError, NotImplementedError) as e:
            raise LinearizeError(f"torch.func.vjp failed at {_describe(node)}: {type(e).__name__}: {e}") from e
        val = val.detach()
        forward_ad = [True]

        def jvp_fn(*ts):
            if forward_ad[0]:
                try:
                    return _jvp(f, primals, ts)[1]
                except NotImplementedError:  # no forward-mode formula at this node: the transpose of its VJP
                    forward_ad[0] = False
            return _vjp(vjp_fn, torch.zeros_like(val))[1](ts)[0]

        return "tensor", val, (vjp_fn, jvp_fn), names

    def leaf_function(self, node, fn, carries, composites, env) -> tuple[Callable, list, tuple]:
        """(f, leaf names, leaf primals): the node's value as a function f of the primal values of the
        tensor-carrying nodes it depends on (a composite argument recomputed from its own leaves inside f).
        Shared by the first-order ``_func_node`` and the second-order generic node of ``engine.jet_net``."""
        flat, spec = tree_flatten((node.args, node.kwargs))
        vals = [env[a.name] if isinstance(a, fx.Node) else a for a in flat]
        leaves: dict[str, torch.Tensor] = {}  # tensor-carrying nodes this one depends on -> their primal values
        slots = []
        for i, a in enumerate(flat):
            if isinstance(a, fx.Node) and a.name in carries:
                slots.append((i, a.name))
                if a.name in composites:
                    for n, v in zip(composites[a.name][1], composites[a.name][2]):
                        leaves.setdefault(n, v)
                else:
                    leaves.setdefault(a.name, env[a.name])
        names = list(leaves)

        def f(*ts):
            m = dict(zip(names, ts))
            v = list(vals)
            for i, name in slots:
                if name in composites:
                    g, g_names, _ = composites[name]
                    v[i] = g(*[m[n] for n in g_names])
                else:
                    v[i] = m[name]
            a, k = tree_unflatten(v, spec)
            return fn(*a, **k)

        return f, names, tuple(leaves.values())


def feature_node(out_node: fx.Node | None, depends: Callable[[str], bool], hint: str = "") -> fx.Node:
    """The node of the one feature tensor a traced graph returns (out_node: its output node); LinearizeError
    unless there is exactly one and ``depends(name)`` (it depends on the input)."""
    assert out_node is not None  # every traced graph ends in an output node
    res = out_node.args[0]
    if isinstance(res, dict):
        if len(res) != 1:
            raise LinearizeError(f"the traced model returns {len(res)} outputs; expected one feature tensor")
        res = next(iter(res.values()))
    if not isinstance(res, fx.Node) or not depends(res.name):
        raise LinearizeError(f"the traced model must return one feature tensor that depends on the input{hint}")
    return res


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def _check_first_point(graph: LinearGraph, fmap, x1: torch.Tensor, d_out: int, tol: float, n_dirs: int = 3) -> None:
    """LinearizeError unless the traced graph at x1 (1, *in) matches torch.func on fmap: the feature, n_dirs
    random VJPs, and n_dirs random JVPs through <c, J t> = <J^T c, t> (the reference needs no forward AD)."""
    lin = graph.linearize(x1)
    dt = lin.out_dtype
    gen = torch.Generator(device="cpu").manual_seed(0)
    C = torch.randn(n_dirs, 1, d_out, generator=gen, dtype=torch.float64).to(device=x1.device, dtype=dt)
    T = torch.randn(n_dirs, *x1.shape, generator=gen, dtype=torch.float64).to(device=x1.device, dtype=dt)
    with torch.enable_grad(), ad_guards():
        want, pull = torch.func.vjp(fmap, x1.to(dt))  # type: ignore[misc]
        want_g = torch.stack([pull(c)[0] for c in C])  # a loop: the model may have no batching rule
    got_g = lin.vjp(C)
    got_t = lin.jvp(T)  # (n, 1, d_out)
    lhs = torch.einsum("iz,jz->ij", C.reshape(n_dirs, -1).double(), got_t.reshape(n_dirs, -1).double())
    rhs = torch.einsum("iz,jz->ij", want_g.reshape(n_dirs, -1).double(), T.reshape(n_dirs, -1).double())
    scale = C.reshape(n_dirs, -1).double().norm(dim=1)[:, None] * got_t.reshape(n_dirs, -1).double().norm(dim=1)[None]
    errs = {
        "feature": _rel(lin.feature, want.detach()),
        "VJP": _rel(got_g, want_g),
        "JVP": float(((lhs - rhs).abs() / scale.clamp_min(torch.finfo(torch.float64).tiny)).max()),
    }
    bad = {k: v for k, v in errs.items() if not v <= tol}
    if bad:
        what = ", ".join(f"{k} {v:.1e}" for k, v in bad.items())
        raise LinearizeError(
            f"the traced, linearised model differs from the model at the first point in {dt} "
            f"(relative error {what} > {tol:g}): torch.fx did not capture what the model computes "
            "(e.g. control flow on values, hooks, in-place writes into views); use method='streamed'"
        )


def validated_linearize(fmap, x: torch.Tensor, d_out: int):
    """``linearize(xb, mode) -> Linearization`` of the linearised engine, validated at the first point.

    The traced graph in the compute dtype must match torch.func on the model (feature, 3 VJPs, 3 JVPs) to
    float rounding (1e-4 relative in float32, 1e-2 in half precision, 1e-9 in float64); below float64 a
    float64 copy of the graph is also checked against the float64 feature map to 1e-9, which catches a
    part of J the trace misses down to about 1e-8 relative. Else LinearizeError (the traced graph is
    not the model). Cost: one or two extra one-point linearisations and reference VJPs."""
    graph = LinearGraph(fmap)
    x1 = x[:1]
    dt = fmap.dtype or x.dtype
    tol = {torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 1e-2}.get(dt, 1e-4)
    _check_first_point(graph, fmap, x1, d_out, tol)
    if dt != torch.float64 and x.device.type != "mps":
        from ..features import FeatureMap

        fmap64 = FeatureMap(fmap.model, fmap.layer, fmap.pool, torch.float64, fmap.target)
        try:
            g64 = LinearGraph(fmap64, channels_last=graph.channels_last)
            _check_first_point(g64, fmap64, x1.to(torch.float64), d_out, 1e-9)
        except (RuntimeError, NotImplementedError) as e:
            if isinstance(e, LinearizeError):
                raise
            raise LinearizeError(
                f"the float64 check of the traced graph could not run ({type(e).__name__}: {e}); use method='streamed'"
            ) from e

    def linearize(xb: torch.Tensor, mode: str) -> Linearization:
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
        return graph.linearize(xb)  # one Linearization serves both modes

    return linearize


class Linearization:
    """J of a point batch as a linear network: ``vjp`` (rows) and ``jvp`` (columns), K directions at once."""

    def __init__(self, input_name, in_shape, steps, out_name, feature, post_vjp, post_jvp, channels_last=False):
        self.input_name, self.in_shape, self.steps = input_name, in_shape, steps
        self.channels_last = channels_last
        self.out_name, self.feature = out_name, feature
        self.out_dtype = feature.dtype
        self.post_vjp, self.post_jvp = post_vjp, post_jvp

    # reverse mode ------------------------------------------------------------------------------
    def vjp(self, C: torch.Tensor) -> torch.Tensor:
        """C (K, P, d_out) -> (K, P, *input_shape): C_k^T J at every point."""
        with ad_guards():
            return self._vjp(C)

    def _vjp(self, C: torch.Tensor) -> torch.Tensor:
        K, P = C.shape[:2]
        pending: dict[str, list] = {self.out_name: [vmap(self.post_vjp)(C)[0]]}
        for st in reversed(self.steps):
            cs = pending.pop(st.name, None)
            if not cs:
                continue
            if st.rule == "act":
                c = dact_add(st.data, cs[0], cs[1]) if len(cs) == 2 else dact_add(st.data, _sum(cs))
                self._send(pending, st.inputs[0], c)
                continue
            c = _sum(cs)
            if st.rule == "conv":
                m = st.data
                shp = (K * P,) + self._shape_of(st.inputs[0])
                g = _CONV[type(m)](
                    shp,
                    m.weight,
                    self._layout(c.reshape(K * P, *c.shape[2:])),
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.groups,
                )
                self._send(pending, st.inputs[0], g.reshape(K, P, *g.shape[1:]))
            elif st.rule == "linear":
                self._send(pending, st.inputs[0], c @ st.data.weight)
            elif st.rule == "scale":
                s = st.data.reshape(-1, *([1] * (len(st.shape) - 1)))
                self._send(pending, st.inputs[0], c * s)
            elif st.rule == "mul":
                factors, carried, shapes = st.data
                for name, i in zip(st.inputs, carried):
                    self._send(pending, name, (c * factors[1 - i]).sum_to_size((K,) + shapes[i]))
            elif st.rule == "layernorm":
                xhat, rstd, w, dims = st.data
                self._send(pending, st.inputs[0], _layer_norm_core(xhat, rstd, dims, c * w if w is not None else c))
            elif st.rule in ("identity", "add"):
                for j, name in enumerate(st.inputs):
                    self._send(pending, name, _unbroadcast(c, st.data, j))
            elif st.rule == "sub":
                self._send(pending, st.inputs[0], _unbroadcast(c, st.data, 0))
                self._send(pending, st.inputs[1], -_unbroadcast(c, st.data, 1))
            elif st.rule == "reshape":
                self._send(pending, st.inputs[0], c.reshape((K,) + st.data[0]))
            elif st.rule == "permute":
                inv = sorted(range(len(st.data)), key=st.data.__getitem__)
                self._send(pending, st.inputs[0], c.permute(0, *[i + 1 for i in inv]))
            elif st.rule == "batchlinear":
                zero = c.new_zeros((K * P,) + self._shape_of(st.inputs[0]))
                with torch.enable_grad():
                    (g,) = _vjp(st.data, zero)[1](c.reshape(K * P, *c.shape[2:]))
                self._send(pending, st.inputs[0], g.reshape(K, P, *g.shape[1:]))
            else:  # func
                grads = vmap(st.data[0], key=f"vjp at {st.name}")(c)
                for name, g in zip(st.inputs, grads):
                    self._send(pending, name, g)
        cs = pending.pop(self.input_name, None)
        if not cs:
            return C.new_zeros(K, P, *self.in_shape)
        return _sum(cs)

    # forward mode ------------------------------------------------------------------------------
    def jvp(self, T: torch.Tensor) -> torch.Tensor:
        """T (K, P, *input_shape) -> (K, P, d_out): J t_k at every point."""
        with ad_guards():
            return self._jvp(T)

    def _jvp(self, T: torch.Tensor) -> torch.Tensor:
        K, P = T.shape[:2]
        tan: dict[str, Any] = {self.input_name: T}
        left = self._uses()
        for st in self.steps:
            ins = [tan[n] for n in st.inputs]
            for n in st.inputs:
                left[n] -= 1
                if left[n] == 0 and n != self.out_name:
                    tan.pop(n, None)
            if st.rule == "act":
                t = ins[0]
                tan[st.name] = dact_add(st.data, t.a, t.b) if isinstance(t, _Deferred) else dact_add(st.data, t)
            else:
                ins = [t.value() if isinstance(t, _Deferred) else t for t in ins]
                tan[st.name] = self._forward_rule(st, ins, K, P)
        t = tan[self.out_name]
        if isinstance(t, _Deferred):
            t = t.value()
        return vmap(self.post_jvp)(t)

    def _forward_rule(self, st: _Step, ins: list, K: int, P: int):
        if st.rule == "conv":
            m = st.data
            t = ins[0]
            y = _CONV_FWD[type(m)](
                self._layout(t.reshape(K * P, *t.shape[2:])), m.weight, None, m.stride, m.padding, m.dilation, m.groups
            )
            return y.reshape(K, P, *y.shape[1:])
        if st.rule == "linear":
            return ins[0] @ st.data.weight.mT
        if st.rule == "scale":
            return ins[0] * st.data.reshape(-1, *([1] * (len(st.shape) - 1)))
        if st.rule == "mul":
            factors, carried, _ = st.data
            out = None
            for t, i in zip(ins, carried):
                term = t * factors[1 - i]
                out = term if out is None else out + term
            return out
        if st.rule == "layernorm":
            return _layer_norm_tangent(st.data, ins[0])
        if st.rule == "identity":
            return ins[0] if st.data is None else ins[0].expand((K,) + st.data[1])
        if st.rule == "add":
            # act(h + skip): leave the sum to the activation's fused dact_add when it is the only user
            fuse = st.data is None and self._single_act_user(st)
            return _Deferred(ins[0], ins[1]) if fuse else ins[0] + ins[1]
        if st.rule == "sub":
            return ins[0] - ins[1]
        if st.rule == "reshape":
            return ins[0].reshape((K,) + st.data[1])
        if st.rule == "permute":
            return ins[0].permute(0, *[d + 1 for d in st.data])
        if st.rule == "batchlinear":
            t = ins[0]
            y = st.data(t.reshape(K * P, *t.shape[2:]))
            return y.reshape(K, P, *y.shape[1:])
        return vmap(st.data[1], key=f"jvp at {st.name}")(*ins)

    # helpers -----------------------------------------------------------------------------------
    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.dim() == 4 else t

    def _send(self, pending: dict, name: str, c: torch.Tensor) -> None:
        pending.setdefault(name, []).append(c)

    def _shape_of(self, name: str) -> tuple:
        if name == self.input_name:
            return self.in_shape
        return self._shapes()[name]

    def _shapes(self) -> dict:
        if not hasattr(self, "_shape_map"):
            self._shape_map = {st.name: st.shape for st in self.steps}
        return self._shape_map

    def _uses(self) -> dict:
        left = {self.input_name: 0}
        for st in self.steps:
            left.setdefault(st.name, 0)
            for n in st.inputs:
                left[n] = left.get(n, 0) + 1
        return left

    def _single_act_user(self, st: _Step) -> bool:
        if not hasattr(self, "_act_users"):
            users: dict[str, list] = {}
            for s in self.steps:
                for n in s.inputs:
                    users.setdefault(n, []).append(s)
            self._act_users = {n: len(u) == 1 and u[0].rule == "act" and n != self.out_name for n, u in users.items()}
        return self._act_users.get(st.name, False)


class _Deferred:
    """A residual sum a + b not yet formed (fused into the next activation's dact_add)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def value(self):
        return self.a + self.b


def _unbroadcast(c: torch.Tensor, bcast, j: int) -> torch.Tensor:
    """The cotangent c (K, *out) of a broadcasting add/sub summed to the shape of its j-th carried input."""
    if bcast is None:
        return c
    return c.sum_to_size((c.shape[0],) + bcast[0][j])


def _sum(cs: list) -> torch.Tensor:
    out = cs[0]
    for c in cs[1:]:
        out = out + c
    return out
