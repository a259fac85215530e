"""The feature map as a linear network at a point batch, with hand-written tangent and cotangent passes.

``LinearGraph(fmap)`` traces the model once (``torch.fx``, through torchvision's
``create_feature_extractor`` when a layer is named), folds eval-mode BatchNorm into the preceding
convolutions (``torch.fx.experimental.optimization.fuse``) and casts a private copy to the compute
dtype. ``graph.linearize(x)`` runs one forward pass at a point batch x (P, *input_shape) and keeps
only what the linear map needs:

- convolution / linear: nothing (the weights; the bias drops out of a linear map);
- BatchNorm left unfolded (eval mode): its per-channel scale;
- elementwise activations (ReLU, GELU, SiLU, tanh, ...): the derivative d = act'(pre-activation), one
  tensor per point batch;
- residual ``add`` / ``sub``, average pooling, ``flatten``: nothing (pooling is applied to, and
  transposed on, the whole (K*P)-batch of directions at once);
- any other node (reshapes with captured sizes, max-pool, products of two carried tensors, the
  feature map's pool and ``target="sphere"`` normalisation, unknown functions): its inputs, and
  ``torch.func.vjp`` / ``jvp`` at that node.

``Linearization.vjp(C (K, P, d_out)) -> (K, P, *input_shape)`` (rows of J for K cotangents at every
point at once) walks the graph backwards: conv -> ``conv_transpose`` (``torch.nn.grad.convNd_input``),
linear -> ``C @ W``, activation -> ``dact_add``, where a node with two consumers (the block input
feeding both the residual branch and the skip) gets ``dact_add(d, c_branch, c_skip)`` = d * (c_branch
+ c_skip) in one fused op. ``jvp(T (K, P, *input_shape)) -> (K, P, d_out)`` walks forwards, with
``act(h + skip)`` fused the same way. Tangents of K directions at P points are one (K*P)-batch of
convolutions. Memory per point batch: one stored tensor per activation (no pre-activations, no
conv inputs), against autograd's saved inputs of every op.

On CPU the copy and the directions are kept channels-last (NHWC): oneDNN's transposed
convolutions are 10-30% faster in that layout; a model whose code needs NCHW-contiguous tensors
(``x.view(B, -1)``) is switched back to NCHW on the first failure.

``validated_linearize(fmap, x, d_out)`` (what the API calls) checks the traced pass at the first point
against torch.func (feature and one random VJP) before any work is done with it.

Models that ``torch.fx`` cannot trace (data-dependent control flow) raise ``LinearizeError``;
``method="auto"`` then uses the autograd engine. The reference is ``torch.func.vjp`` / ``jvp`` of
the feature map itself (tests/test_linear_net.py).
"""
from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import jvp as _jvp
from torch.func import vjp as _vjp
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..ops.linearized import dact_add


class LinearizeError(RuntimeError):
    """The model cannot be traced into a linearisable graph (use method='streamed')."""


_ACT_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Mish,
                nn.Hardtanh, nn.ReLU6, nn.CELU, nn.SELU, nn.Tanhshrink, nn.Softsign, nn.Hardswish, nn.Hardsigmoid)
_ACT_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.elu, F.leaky_relu, F.softplus,
                  F.mish, torch.nn.functional.relu6, F.hardtanh, F.selu, F.celu, F.tanh, F.sigmoid,
                  F.hardswish, F.hardsigmoid, F.softsign}
_ACT_METHODS = {"relu", "tanh", "sigmoid"}
_CONV = {nn.Conv1d: torch.nn.grad.conv1d_input, nn.Conv2d: torch.nn.grad.conv2d_input,
         nn.Conv3d: torch.nn.grad.conv3d_input}
_CONV_FWD = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# per-sample linear maps that act on any batch size: applied to the (K*P)-batch of tangents directly,
# transposed by torch.func.vjp at zeros (their transpose does not depend on the primal)
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AvgPool3d)
_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool1d, F.avg_pool2d,
                   F.avg_pool3d}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}


@dataclass
class _Step:
    """One tangent-carrying node: rule in {"conv", "linear", "scale", "act", "add", "sub", "identity",
    "batchlinear", "func"}."""
    name: str
    rule: str
    inputs: list  # names of the tangent-carrying input nodes (in argument order)
    data: Any = None  # module (conv/linear), scale, derivative, or (fn, primals) for "func"
    shape: tuple = ()  # per-point output shape


def _start_dim(args, kwargs) -> int:
    sd = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
    return sd if sd >= 0 else sd + args[0].dim()


def _trace(fmap) -> fx.GraphModule:
    model, layer = fmap.model, fmap.layer
    if model is None or (layer is not None and not isinstance(layer, str)):
        raise LinearizeError("method='linearized' needs an nn.Module and a layer name (or None); a callable feature "
                             "map cannot be traced: use method='streamed'")
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
            raise LinearizeError(f"torch.fx could not trace {type(model).__name__}"
                                 f"{'' if layer is None else f' up to layer {layer!r}'} ({type(e).__name__}: {e}); "
                                 "use method='streamed'") from e
        gm.eval()
        try:
            from torch.fx.experimental.optimization import fuse
            gm = fuse(gm, inplace=True)
        except Exception:  # noqa: BLE001 - folding is an optimisation; unfolded BN is handled as a scale
            pass
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm


def _elementwise_derivative(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """act'(x) for an elementwise fn: one reverse-mode product with a cotangent of ones."""
    with torch.enable_grad():
        y, pull = _vjp(fn, x)
        return pull(torch.ones_like(y))[0]


class LinearGraph:
    """A traced, BatchNorm-folded copy of ``fmap``'s model up to its layer (see module docstring)."""

    def __init__(self, fmap, channels_last: bool | None = None):
        self.fmap = fmap
        self.gm = _trace(fmap)
        has_conv2d = any(type(m) is nn.Conv2d for m in self.gm.modules())
        dev = next((p.device for p in self.gm.parameters()), torch.device("cpu"))
        # NHWC: oneDNN's transposed convolutions are 10-30% faster on CPU (bench/logvol_cpu.py). On CUDA the
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
            if isinstance(mod, (nn.Identity, nn.Dropout)) and len(args) == 1:
                return "identity", None
            if isinstance(mod, _POOL_MODULES) and len(args) == 1 and not kwargs:
                return "batchlinear", mod
            if isinstance(mod, nn.Flatten) and mod.start_dim not in (0, -args[0].dim()) and len(args) == 1:
                return "batchlinear", mod
        elif node.op == "call_function":
            if node.target in _POOL_FUNCTIONS and carried == [0] and not any(
                    isinstance(a, torch.Tensor) for a in list(args[1:]) + list(kwargs.values())):
                return "batchlinear", (lambda t, _f=node.target, _a=args, _k=kwargs: _f(t, *_a[1:], **_k))
            if node.target is torch.flatten and carried == [0] and _start_dim(args, kwargs) >= 1:
                return "batchlinear", (lambda t, _a=args, _k=kwargs: torch.flatten(t, *_a[1:], **_k))
            if node.target in _ACT_FUNCTIONS and len(carried) == 1 and carried[0] == 0 and not any(
                    isinstance(a, torch.Tensor) for a in list(args[1:]) + list(kwargs.values())):
                return "act", None
            if node.target in _ADD | _SUB and len(args) == 2 and not kwargs:
                rule = "add" if node.target in _ADD else "sub"
                if len(carried) == 2:
                    return rule, None
                if carried == [0] or (carried == [1] and rule == "add"):
                    return "identity", None
        elif node.op == "call_method":
            if node.target in _ACT_METHODS and len(args) == 1 and not kwargs:
                return "act", None
        return "func", None

    def linearize(self, x: torch.Tensor) -> "Linearization":
        """One forward pass at x (P, *input_shape): the linear map's stored data and phi(x) (P, d_out)."""
        if self.fmap.dtype is not None and x.dtype != self.fmap.dtype:
            x = x.to(self.fmap.dtype)
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

    def _linearize(self, x: torch.Tensor) -> "Linearization":
        env: dict[str, Any] = {}
        carries: set[str] = set()
        steps: list[_Step] = []
        users = {n.name: len(n.users) for n in self.nodes}
        out_node = None
        with torch.no_grad():
            for node in self.nodes:
                if node.op == "placeholder":
                    env[node.name] = x
                    carries.add(node.name)
                    continue
                if node.op == "output":
                    out_node = node
                    break
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
                    env[node.name] = fn(*args, **kwargs)  # constant w.r.t. x
                    continue
                carried = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a.name in carries]
                top = {node.args[i].name for i in carried}
                rule, data = (("func", None) if top != {a.name for a in ins}
                              else self._classify(node, args, kwargs, carried))
                in_names = [node.args[i].name for i in carried]
                if rule == "act":
                    act = (lambda t, _f=fn, _a=args, _k=kwargs: _f(t, *_a[1:], **_k))
                    data = _elementwise_derivative(act, args[0].clone())
                    val = fn(*args, **kwargs)
                elif rule == "func":
                    val = fn(*args, **kwargs)
                    if isinstance(val, torch.Tensor) and val.is_floating_point():
                        val, data, in_names = self._func_node(node, fn, carries, env)
                else:
                    val = fn(*args, **kwargs)
                env[node.name] = val
                if not (isinstance(val, torch.Tensor) and val.is_floating_point()):
                    continue  # sizes, shapes, integer tensors: no tangent flows through them
                carries.add(node.name)
                steps.append(_Step(node.name, rule, in_names, data, tuple(val.shape[1:])))
                for a in node.all_input_nodes:  # free primal values no later node needs (conv inputs, pre-activations)
                    users[a.name] -= 1
                    if users[a.name] == 0 and a.name != self.input:
                        env.pop(a.name, None)
        res = out_node.args[0]
        if isinstance(res, dict):
            if len(res) != 1:
                raise LinearizeError(f"the traced model returns {len(res)} outputs; expected one feature tensor")
            res = next(iter(res.values()))
        if not isinstance(res, fx.Node) or res.name not in carries:
            raise LinearizeError("the traced model must return one feature tensor that depends on the input; "
                                 "use method='streamed'")
        y = env[res.name]
        with torch.enable_grad():
            feat, post_vjp = _vjp(self.fmap.post, y)
        post_jvp = (lambda t, _y=y: _jvp(self.fmap.post, (_y,), (t,))[1])
        return Linearization(self.input, tuple(x.shape[1:]), steps, res.name, feat.detach(), post_vjp, post_jvp,
                             self.channels_last)

    def _callable(self, node: fx.Node) -> Callable:
        if node.op == "call_module":
            return self.modules[node.target]
        if node.op == "call_function":
            return node.target
        if node.op == "call_method":
            return lambda obj, *a, _m=node.target, **k: getattr(obj, _m)(*a, **k)
        raise LinearizeError(f"unsupported fx node {node.op!r}")

    def _func_node(self, node, fn, carries, env):
        """Generic node: (value, (vjp_fn, jvp_fn), input names) by torch.func at its primal inputs.

        The arguments are flattened with pytree (lists for torch.cat, kwargs), so a node may take the
        input anywhere in its arguments, and more than once."""
        flat, spec = tree_flatten((node.args, node.kwargs))
        vals = [env[a.name] if isinstance(a, fx.Node) else a for a in flat]
        slots = [i for i, a in enumerate(flat) if isinstance(a, fx.Node) and a.name in carries]
        names = [flat[i].name for i in slots]

        def f(*ts):
            v = list(vals)
            for i, t in zip(slots, ts):
                v[i] = t
            a, k = tree_unflatten(v, spec)
            return fn(*a, **k)

        primals = tuple(vals[i] for i in slots)
        with torch.enable_grad():
            val, vjp_fn = _vjp(f, *primals)

        def jvp_fn(*ts):
            return _jvp(f, primals, ts)[1]

        return (val.detach() if isinstance(val, torch.Tensor) else val), (vjp_fn, jvp_fn), names


def validated_linearize(fmap, x: torch.Tensor, d_out: int):
    """``linearize(xb, mode)`` of the linearised engine (engine/linear_net.py), validated at the first
    point against the model itself: the feature and one random VJP must agree with torch.func's to
    float rounding (1e-4 relative in float32), else LinearizeError (the traced graph is not the model)."""
    graph = LinearGraph(fmap)
    x1 = x[:1]
    lin = graph.linearize(x1)
    gen = torch.Generator(device="cpu").manual_seed(0)
    c = torch.randn(1, 1, d_out, generator=gen, dtype=torch.float64).to(device=x.device, dtype=lin.out_dtype)
    with torch.enable_grad():
        want, pull = torch.func.vjp(fmap, x1.to(lin.feature.dtype))
        want_g = pull(c[0])[0]
    got_g = lin.vjp(c)[0]
    tol = 1e-2 if want.dtype in (torch.float16, torch.bfloat16) else 1e-4

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))

    err = max(rel(lin.feature, want.detach()), rel(got_g, want_g))
    if not err <= tol:
        raise LinearizeError(f"the traced, linearised model differs from the model at the first point "
                             f"(relative error {err:.1e} > {tol}): torch.fx did not capture what the model "
                             "computes (e.g. control flow on values, hooks); use method='streamed'")
    return lambda xb, mode: graph.linearize(xb)


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
                g = _CONV[type(m)](shp, m.weight, self._layout(c.reshape(K * P, *c.shape[2:])), m.stride, m.padding,
                                   m.dilation, m.groups)
                self._send(pending, st.inputs[0], g.reshape(K, P, *g.shape[1:]))
            elif st.rule == "linear":
                self._send(pending, st.inputs[0], c @ st.data.weight)
            elif st.rule == "scale":
                s = st.data.reshape(-1, *([1] * (len(st.shape) - 1)))
                self._send(pending, st.inputs[0], c * s)
            elif st.rule in ("identity", "add"):
                for name in st.inputs:
                    self._send(pending, name, c)
            elif st.rule == "sub":
                self._send(pending, st.inputs[0], c)
                self._send(pending, st.inputs[1], -c)
            elif st.rule == "batchlinear":
                zero = c.new_zeros((K * P,) + self._shape_of(st.inputs[0]))
                with torch.enable_grad():
                    (g,) = _vjp(st.data, zero)[1](c.reshape(K * P, *c.shape[2:]))
                self._send(pending, st.inputs[0], g.reshape(K, P, *g.shape[1:]))
            else:  # func
                grads = vmap(st.data[0])(c)
                for name, g in zip(st.inputs, grads):
                    self._send(pending, name, g)
        cs = pending.pop(self.input_name, None)
        if not cs:
            return C.new_zeros(K, P, *self.in_shape)
        return _sum(cs)

    # forward mode ------------------------------------------------------------------------------
    def jvp(self, T: torch.Tensor) -> torch.Tensor:
        """T (K, P, *input_shape) -> (K, P, d_out): J t_k at every point."""
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
            y = _CONV_FWD[type(m)](self._layout(t.reshape(K * P, *t.shape[2:])), m.weight, None, m.stride, m.padding,
                                   m.dilation, m.groups)
            return y.reshape(K, P, *y.shape[1:])
        if st.rule == "linear":
            return ins[0] @ st.data.weight.mT
        if st.rule == "scale":
            return ins[0] * st.data.reshape(-1, *([1] * (len(st.shape) - 1)))
        if st.rule == "identity":
            return ins[0]
        if st.rule == "add":
            # act(h + skip): leave the sum to the activation's fused dact_add when it is the only user
            return _Deferred(ins[0], ins[1]) if self._single_act_user(st) else ins[0] + ins[1]
        if st.rule == "sub":
            return ins[0] - ins[1]
        if st.rule == "batchlinear":
            t = ins[0]
            y = st.data(t.reshape(K * P, *t.shape[2:]))
            return y.reshape(K, P, *y.shape[1:])
        return vmap(st.data[1])(*ins)

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


def _sum(cs: list) -> torch.Tensor:
    out = cs[0]
    for c in cs[1:]:
        out = out + c
    return out
